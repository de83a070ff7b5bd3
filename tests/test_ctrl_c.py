"""Ctrl-C inside a sweep (sweeps.search.worker.ctrl_c_sets), with real signals in a child process:
the first finishes gracefully, the second aborts at the caller's next check and never inside
whatever the main thread was doing, the third (or a stuck abort) exits at once with code 130."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from _sweep_helpers import REPO

PRELUDE = textwrap.dedent("""
    import os, signal, sys, threading, time
    from sweeps.search import worker
    from sweeps.search.worker import Interrupt, ctrl_c_sets
    worker.ABORT_GRACE_S = float(sys.argv[1])

    def ctrl_c():
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)  # the handler runs in this thread, between two bytecodes
""")


def run(body: str, grace_s: float = 30.0) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", PRELUDE + textwrap.dedent(body), str(grace_s)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)


def test_the_second_ctrl_c_aborts_at_the_next_check_not_inside_a_lock():
    done = run("""
        interrupted, lock = Interrupt(), threading.Lock()
        with ctrl_c_sets(interrupted) as signals:
            ctrl_c()
            assert interrupted.is_set() and interrupted.by == "Ctrl-C"
            signals.check()  # the first Ctrl-C asks for a graceful finish only
            with lock:  # as a journal write or an SQLite commit would be
                ctrl_c()
                print("the lock's block ran to its end")
            assert not lock.locked()
            try:
                signals.check()
            except KeyboardInterrupt:
                print("aborting")
        time.sleep(1.0)  # past the abort's grace: leaving the block disarmed the last resort
        print("alive")
    """, grace_s=0.3)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:3] == ["the lock's block ran to its end", "aborting", "alive"]


def test_a_third_ctrl_c_exits_at_once_with_130():
    done = run("""
        with ctrl_c_sets(Interrupt()) as signals:
            ctrl_c()
            ctrl_c()
            ctrl_c()
            print("still here")
    """)
    assert done.returncode == 130
    assert "still here" not in done.stdout
    assert "Ctrl-C a third time: exiting without clean-up" in done.stderr
    assert "reaped by the next kdsweep run" in done.stderr


def test_an_abort_that_does_not_end_exits_with_130_and_shows_where_it_was_stuck():
    done = run("""
        def stuck_abort():
            time.sleep(60)

        with ctrl_c_sets(Interrupt()) as signals:
            ctrl_c()
            ctrl_c()
            try:
                signals.check()
            except KeyboardInterrupt:
                stuck_abort()
    """, grace_s=1.0)
    assert done.returncode == 130
    assert "the abort did not end within 1 s" in done.stderr
    assert "stuck_abort" in done.stderr  # every thread's stack, for the bug report


def test_sigterm_counts_like_ctrl_c():
    done = run("""
        interrupted = Interrupt()
        with ctrl_c_sets(interrupted) as signals:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)
            print(interrupted.by)
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)
            print(signals.aborting.is_set())
    """)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["SIGTERM", "True"]
