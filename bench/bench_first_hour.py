"""A new user's first hour, timed step by step: the figures in the README.

Follows the README and docs/tasks.md from a fresh clone, as a user would, each step a shell
command run in a fresh folder with a fresh virtual environment:

1. ``clone``: ``git clone`` of this checkout (or ``--repo URL``);
2. ``install``: ``python3 -m venv .venv && pip install -e .`` (README command 1, before its sweep);
3. ``teacher``: ``python train_teacher.py`` in ``examples/`` (the user's own pretrained teacher);
4. ``train``: ``kdsweep train --task tabular_task:make_task --epochs 2 --store ./kd-store``;
5. ``sweep``: ``kdsweep run --task tabular_task:make_task --budget 2m --store ./kd-store``
   (a 2-minute search, then the KD verdict);
6. ``query``: the ``trials:`` hint the sweep printed, run as printed, then ``best`` and a pandas
   query through ``sweeps.trials``;
7. ``report``: the ``report:`` hint the sweep printed, run as printed.

Every step must exit 0 (the script stops at the first that does not) and prints its wall time; the
sweep's verdict line and the report's path are echoed. The clone is deleted at the end unless
``--keep``.

    python bench/bench_first_hour.py [--repo PATH_OR_URL] [--budget 2m] [--keep]
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TASK = "tabular_task:make_task"
PANDAS_QUERY = (
    "from sweeps import trials, best, verdict_line, comparison; "
    "df = trials('{study}', store='kd-store'); "
    "print(df[['number', 'state', 'temperature', 'alpha', 'ratio', 'best_val_acc', 'student_params']]"
    ".sort_values('best_val_acc', ascending=False).head().to_string(index=False)); "
    "print(verdict_line(comparison('{study}', store='kd-store')))"
)


class StepFailed(Exception):
    pass


def step(name: str, command: str, cwd: Path, timings: list[tuple[str, float]], env: dict[str, str]) -> str:
    """Run one shell command as a user types it; record its wall time; return its output."""
    print(f"\n=== {name}: {command}", flush=True)
    started = time.monotonic()
    done = subprocess.run(["bash", "-c", command], cwd=cwd, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
    elapsed = time.monotonic() - started
    timings.append((name, elapsed))
    print(done.stdout[-4000:], end="")
    print(f"--- {name}: exit {done.returncode}, {elapsed:.1f}s", flush=True)
    if done.returncode != 0:
        raise StepFailed(f"step {name!r} exited {done.returncode}: {command}")
    return done.stdout


def hint(output: str, label: str) -> str:
    """The command after ``label`` in the sweep's closing hints (up to a ``|`` alternative)."""
    for line in output.splitlines():
        if line.startswith(label):
            return line[len(label):].split("   |   ")[0].split("   (or:")[0].strip()
    raise StepFailed(f"the sweep printed no {label!r} hint")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repo", default=str(REPO), help="what to clone (default: this checkout)")
    parser.add_argument("--budget", default="2m", help="the sweep's --budget (default: 2m)")
    parser.add_argument("--keep", action="store_true", help="keep the clone and its store")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="kdsweep-first-hour-"))
    clone = root / "kdsweep"
    examples = clone / "examples"
    # A user's shell: no store or tracking server inherited from this one.
    env = {k: v for k, v in os.environ.items()
           if k not in ("KDSWEEP_STORE", "MLFLOW_TRACKING_URI", "VIRTUAL_ENV", "PYTHONPATH")}
    env["PATH"] = f"{clone / '.venv' / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    timings: list[tuple[str, float]] = []
    started = time.monotonic()
    try:
        step("clone", f"git clone -q {shlex.quote(args.repo)} {shlex.quote(str(clone))}", root, timings, env)
        step("install", "python3 -m venv .venv && . .venv/bin/activate && pip install -q -e .", clone, timings, env)
        step("teacher", "python train_teacher.py", examples, timings, env)
        step("train", f"kdsweep train --task {TASK} --epochs 2 --store ./kd-store", examples, timings, env)
        sweep = step("sweep", f"kdsweep run --task {TASK} --budget {shlex.quote(args.budget)} --store ./kd-store",
                     examples, timings, env)
        study = shlex.split(hint(sweep, "trials:"))[2]
        query = " && ".join([hint(sweep, "trials:"), f"kdsweep best {study} --store ./kd-store",
                             f"python -c {shlex.quote(PANDAS_QUERY.format(study=study))}"])
        step("query", query, examples, timings, env)
        report = step("report", hint(sweep, "report:"), examples, timings, env)
    except StepFailed as failure:
        print(f"\nfirst hour: FAILED: {failure} (clone kept in {root})")
        return 1
    finally:
        total = time.monotonic() - started
        print("\nfirst hour, step by step (wall time):")
        for name, elapsed in timings:
            print(f"  {name:<8} {elapsed:7.1f}s")
        print(f"  {'total':<8} {total:7.1f}s  ({total / 60:.1f} min) on {os.cpu_count()} cores")
    verdict = next((line for line in sweep.splitlines() if line.startswith("KD verdict")), "no verdict line")
    print(f"\n{verdict}\n{report.strip().splitlines()[-1] if report.strip() else ''}")
    if args.keep:
        print(f"kept: {root}")
    else:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
