"""Run the test suite beside CPU-burning processes: the proof that the tests wait on events, not on
a quiet machine (docs/benchmarks.md has the figures).

A user's laptop is rarely idle. This starts ``--burners`` processes that each spin one core
(``while True: pass``), runs ``pytest`` with the arguments given after ``--`` (default: the whole
suite, quietly), stops the burners whatever happens, and prints the suite's wall time beside the
load average it ran under. The exit code is pytest's.

    python bench/bench_busy_suite.py                      # two burners, the whole suite
    python bench/bench_busy_suite.py --burners 0          # the same suite on a quiet machine
    python bench/bench_busy_suite.py -- -q tests/test_sweep_crash.py -k ctrl_c
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BURN = "while True: pass"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--burners", type=int, default=2, help="CPU-burning processes beside the suite (default: 2)")
    parser.add_argument("pytest_args", nargs="*", help="arguments for pytest, after -- (default: -q)")
    args = parser.parse_args()
    if args.burners < 0:
        parser.error(f"--burners {args.burners}: must be 0 or more")

    burners = [subprocess.Popen([sys.executable, "-c", BURN]) for _ in range(args.burners)]
    started = time.monotonic()
    try:
        # As typed in a terminal, also when this script runs in the background (which ignores SIGINT).
        suite = subprocess.run([sys.executable, "-m", "pytest", *(args.pytest_args or ["-q"])], cwd=REPO,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    finally:
        load = os.getloadavg()
        for burner in burners:
            burner.kill()
            burner.wait()
    minutes, seconds = divmod(time.monotonic() - started, 60)
    print(f"\nbusy suite: {args.burners} burner(s) on {os.cpu_count()} cores, pytest exit {suite.returncode}, "
          f"{int(minutes)}m{seconds:04.1f}s; load average at the end {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} "
          "(1 / 5 / 15 min)")
    return suite.returncode


if __name__ == "__main__":
    sys.exit(main())
