"""A sweep worker: asks the study for trials and runs them until the budget or trial count ends.

``kdsweep run --jobs 1`` runs one worker in a thread of the main process; ``--jobs N`` starts N
worker processes sharing the Optuna storage, each with ``plan.threads`` torch threads (kdcore.threads). A worker process
whose parent dies (killed) finishes its epoch as after Ctrl-C, and exits within a few seconds.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from sweeps._pause import pause_at
from sweeps.search.join import window_until, within_window
from sweeps.search.trial import DUPLICATE, run_trial
from sweeps.tracking.logged_run import prepare
from sweeps.tracking.storage import open_storage
from sweeps.tracking.store import Store

if TYPE_CHECKING:
    from sweeps.search.plan import SweepPlan

log = logging.getLogger("kdsweep")

ORPHAN_POLL_S = 0.5
_POLL_S = 0.5  # how often a joined worker's main thread looks for a second Ctrl-C
ORPHAN_EXIT_S = 5.0  # a worker whose parent died exits this long after, even mid-epoch
MAX_DUPLICATES_IN_A_ROW = 20  # then the sampler has nothing new to propose
ABORT_GRACE_S = 20.0  # what a second Ctrl-C's clean-up may take before the process exits regardless


def work(plan: SweepPlan, worker: int, interrupt: threading.Event) -> None:
    """Run trials one after another while the plan allows and no interrupt is set."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    store = Store(root=Path(plan.store_root), tracking_uri=plan.tracking_uri)
    study = optuna.load_study(study_name=plan.study, storage=open_storage(plan.storage_url),
                              sampler=plan.sampler_for(worker), pruner=plan.make_pruner())
    prepared = prepare(plan.task, store, device=plan.fixed.get("device", "auto"),  # a cache hit
                       teachers=int(plan.search_space().largest("teachers")))
    client = store.client()
    duplicates = 0  # proposals in a row that repeated a finished trial
    while not interrupt.is_set():
        # A joined worker's time ends with the study's trials window too, which the run moves.
        current = within_window(plan, study) if plan.joined else plan
        trials = study.get_trials(deepcopy=False)
        if not (current.trials_left(trials) and current.has_time_for_a_trial(trials)) or _grid_done(study):
            return
        if current.failing(trials):  # the sweep stops: sweeps/search/sweep.py says why
            return
        if duplicates >= MAX_DUPLICATES_IN_A_ROW:
            log.warning("the sampler proposed %d finished configurations in a row: the search space looks exhausted "
                        "(widen it, or give more choices); this worker stops", duplicates)
            return
        trial = study.ask()
        pause_at("asked")
        run_trial(study, trial, current, prepared, client, interrupt)
        ended = study._storage.get_trial(trial._trial_id)
        duplicates = duplicates + 1 if ended.user_attrs.get("stop_reason") == DUPLICATE else 0


def run_joined(plan: SweepPlan, note: Callable[[str], None]) -> tuple[dict[str, int], bool]:
    """``kdsweep worker``: run trials of a study another process runs, until its window or this
    worker's budget ends; returns this worker's trials by state, and whether Ctrl-C stopped it.
    Ctrl-C finishes the running epoch (the trial resumes elsewhere), a second one aborts at once;
    neither leaves the trial RUNNING."""
    import optuna

    from sweeps.search.join import sampler_offset
    from sweeps.search.leases import REAP_EVERY_S, reap_stale_trials
    from sweeps.tracking.shared import fetch_teacher, is_shared
    from sweeps.tracking.storage import storage_lock

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    store = Store(root=Path(plan.store_root), tracking_uri=plan.tracking_uri)
    client = store.client()
    if is_shared(plan.tracking_uri):
        fetched = fetch_teacher(client, plan.parent_run_id, store.root)
        note(f"teacher: {'downloaded and verified ' + ' and '.join(fetched) if fetched else 'already here, verified'}")
    _check_teacher_here(plan, store)
    study = optuna.load_study(study_name=plan.study, storage=open_storage(plan.storage_url))
    if window_until(study) <= time.time():
        note(f"study '{plan.study}' takes no trials now: its run's trials ended (or it is over); workers join "
             f"while `kdsweep run --study {plan.study}` is in its trials")

    def reap(also_pids: frozenset[int] = frozenset()) -> None:
        reap_stale_trials(study, client, store_root=plan.store_root, experiment_id=plan.experiment_id,
                          lock=storage_lock(plan.storage_url), also_pids=also_pids)

    interrupt, done = Interrupt(), threading.Event()
    trials = threading.Thread(target=lambda: (work(plan, sampler_offset(), interrupt), done.set()),
                              name="kdsweep-worker", daemon=True)
    with ctrl_c_sets(interrupt) as signals:
        try:
            trials.start()
            last_reap = time.monotonic()
            while not done.wait(_POLL_S):
                signals.check()
                if time.monotonic() - last_reap > REAP_EVERY_S:  # a survivor finishes what a lost worker left
                    reap()
                    last_reap = time.monotonic()
        except KeyboardInterrupt:  # the second Ctrl-C: reap this process's own trial now
            reap(frozenset({os.getpid()}))
            raise
    mine = [t for t in study.get_trials(deepcopy=False) if plan.ran(t)]
    return {state: sum(t.state.name == state for t in mine) for state in ("COMPLETE", "PRUNED", "FAIL")}, \
        interrupt.is_set()


def _check_teacher_here(plan: SweepPlan, store: Store) -> None:
    """A worker never trains a teacher: the study's must be here (downloaded, or a shared store)."""
    from kdcore import KDSweepError, get_task
    from kdcore.teacher import teacher_path

    task = get_task(plan.task)
    if task.pretrained_teacher() is None and not teacher_path(task, store.root).exists():
        raise KDSweepError(f"the teacher of task '{task.name}' is not in {store.root} and the study's tracking store "
                           f"{plan.tracking_uri} is not a server it was published to: give the --tracking-uri "
                           "http://... of the run's MLflow server, or the run's --store folder")


def _grid_done(study) -> bool:
    exhausted = getattr(study.sampler, "is_exhausted", None)
    return bool(exhausted and exhausted(study))


class _Either:
    """Set when either event is: the parent's Ctrl-C relay, or this worker's own orphan watch."""

    def __init__(self, *events) -> None:
        self.events = events

    def is_set(self) -> bool:
        return any(event.is_set() for event in self.events)


def _exit_when_orphaned(parent: int, orphaned: threading.Event) -> None:
    """Poll the parent pid; once the parent is gone, stop the trial (as Ctrl-C does), then exit."""
    while os.getppid() == parent:
        time.sleep(ORPHAN_POLL_S)
    log.warning("worker %d: the kdsweep process that started it is gone; stopping", os.getpid())
    orphaned.set()
    time.sleep(ORPHAN_EXIT_S)
    os._exit(1)  # still in an epoch: its lease names a dead process, so the next run reaps the trial


def process_main(plan: SweepPlan, worker: int, interrupt, parent: int | None = None) -> None:
    """Entry point of a worker process: the parent relays Ctrl-C through ``interrupt``."""
    from kdcore.threads import use_threads

    # The parent relays Ctrl-C and SIGTERM (a supervisor may signal the whole process group).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    use_threads(plan.threads)
    orphaned = threading.Event()
    parent = os.getppid() if parent is None else parent
    threading.Thread(target=_exit_when_orphaned, args=(parent, orphaned), name="kdsweep-orphan-watch",
                     daemon=True).start()
    work(plan, worker, _Either(interrupt, orphaned))


class Interrupt(threading.Event):
    """Set by the first Ctrl-C or SIGTERM (what ``docker stop``, Kubernetes and Slurm send);
    ``by`` names which, for the messages and the verdict's reason."""

    by = "Ctrl-C"


class ctrl_c_sets:
    """The first Ctrl-C or SIGTERM sets ``events``: finish gracefully. The second asks for an abort,
    which the caller's loop starts at its next ``check()`` by raising KeyboardInterrupt there.

    The handler never raises itself: an exception thrown wherever the main thread happens to be
    can land inside a library's lock or transaction (Optuna's journal lock, an SQLite write) and
    leave it held, and the abort's own writes would then wait on it for ever. Should the abort
    still not end within ``ABORT_GRACE_S``, or a third signal come, the process exits at once
    with code 130; the trials it leaves RUNNING name a dead process, and the next run reaps them.
    """

    _SIGNALS = {signal.SIGINT: "Ctrl-C", signal.SIGTERM: "SIGTERM"}

    def __init__(self, *events: threading.Event) -> None:
        self.event = events[0]
        self.events = events
        self.aborting = threading.Event()
        self.previous: dict[int, object] = {}
        self._watchdog: threading.Timer | None = None

    def check(self) -> None:
        """Raise KeyboardInterrupt if a second signal asked for an abort: call where no lock is held."""
        if self.aborting.is_set():
            raise KeyboardInterrupt

    def __enter__(self) -> ctrl_c_sets:
        if threading.current_thread() is not threading.main_thread():
            return self

        def handle(signum, frame):
            if self.aborting.is_set():
                _exit_now(f"{self._SIGNALS[signum]} a third time: exiting without clean-up")
            elif self.event.is_set():
                self.aborting.set()
                self._watchdog = threading.Timer(ABORT_GRACE_S, _exit_now, args=(
                    f"the abort did not end within {ABORT_GRACE_S:.0f} s: exiting without clean-up",))
                self._watchdog.daemon = True
                self._watchdog.start()
            else:
                for event in self.events:
                    if isinstance(event, Interrupt):
                        event.by = self._SIGNALS[signum]
                    event.set()

        self.previous = {sig: signal.signal(sig, handle) for sig in self._SIGNALS}
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def _exit_now(why: str) -> None:
    """The last resort of an abort: say why, show where each thread was (a stuck abort is a bug
    worth reporting), and exit 130 without waiting on anything."""
    import faulthandler
    import sys

    sys.stderr.write(f"error: {why}; trials left RUNNING are reaped by the next kdsweep run on this study\n")
    faulthandler.dump_traceback(sys.stderr, all_threads=True)
    sys.stderr.flush()
    os._exit(130)
