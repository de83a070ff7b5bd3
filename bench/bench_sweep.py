"""How well ``kdsweep run`` keeps its budget, and how many trials an hour --jobs 1 and --jobs 2 get.

For every budget asked for (default: 1m and 5m), it runs the real CLI twice on the same task and
budget, once with ``--jobs 1`` and once with ``--jobs 2``, each in a new study of the same store,
and reports side by side:

- ``wall/budget``: the wall time of the whole ``kdsweep run`` process (start to exit, measured
  around the subprocess) over the budget. The spec allows budget * 1.02 + 5 s.
- ``trials/h``: trials the workers took up (COMPLETE + PRUNED + FAIL) per hour of that wall time,
  and ``epochs/h``: training epochs run per hour, which does not depend on how many trials the
  pruner cut short.
- the count of each trial state and the best validation accuracy reached.

The teacher and its cached logits are made once, before any timing, in ``--store`` (default:
``bench/.store``, kept between runs so the ~16 s MNIST-1D teacher trains only the first time);
each sweep gets a fresh study name, so nothing is resumed. The machine (CPU model, cores) and the
load average before each run are printed: the numbers mean little on a busy machine.

    python bench/bench_sweep.py [--budgets 1m 5m] [--task mnist1d] [--jobs 1 2] [--store DIR]
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sweeps.search.budget import parse_budget  # noqa: E402

DEFAULT_STORE = REPO / "bench" / ".store"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> str:
    import torch

    return (f"{cpu_model()}, {os.cpu_count()} cores, {platform.system()} {platform.release()}, "
            f"Python {platform.python_version()}, torch {torch.__version__}")


@dataclass
class Result:
    budget: str
    jobs: int
    wall_s: float
    budget_s: float
    returncode: int
    counts: dict[str, int]
    epochs: int
    best_val_acc: float | None
    load_before: float

    @property
    def trials(self) -> int:
        return sum(self.counts.values())

    def row(self) -> list[str]:
        hours = self.wall_s / 3600
        best = f"{self.best_val_acc:.4f}" if self.best_val_acc is not None else "-"
        limit = self.budget_s * 1.02 + 5
        return [self.budget, str(self.jobs), f"{self.wall_s:.1f}", f"{self.wall_s / self.budget_s:.3f}",
                "yes" if self.wall_s <= limit else "NO", str(self.trials),
                f"{self.counts['COMPLETE']}/{self.counts['PRUNED']}/{self.counts['FAIL']}",
                f"{self.trials / hours:.0f}", f"{self.epochs / hours:.0f}", best, f"{self.load_before:.2f}",
                str(self.returncode)]


HEADER = ["budget", "jobs", "wall s", "wall/budget", "<= 1.02b+5s", "trials", "C/P/F", "trials/h", "epochs/h",
          "best val", "load", "exit"]


def prepare_store(task: str, store: Path) -> None:
    """Train (or load) the teacher, build its logit cache and the MLflow database, untimed."""
    from sweeps.tracking.logged_run import prepare
    from sweeps.tracking.store import Store

    paths = Store.resolve(store)
    started = time.time()
    prepared = prepare(task, paths)
    paths.client().search_experiments()
    how = f"trained in {prepared.teacher.train_time_s:.1f}s" if prepared.teacher.trained_now else "loaded"
    print(f"teacher {how} (test_acc {prepared.teacher.test_acc:.4f}); store ready in "
          f"{time.time() - started:.1f}s: {paths.root}", flush=True)


def run_sweep(task: str, store: Path, budget: str, jobs: int, study: str) -> Result:
    """One ``kdsweep run`` in a subprocess, timed from start to exit, then read back from Optuna."""
    import optuna

    from sweeps.tracking.storage import open_storage

    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "KDSWEEP_STORE")}
    load = os.getloadavg()[0]
    command = [sys.executable, "-m", "cli.main", "run", "--task", task, "--budget", budget, "--jobs", str(jobs),
               "--store", str(store), "--study", study]
    started = time.perf_counter()
    done = subprocess.run(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        print(f"  kdsweep exited {done.returncode}: {done.stderr.strip()[-2000:]}", file=sys.stderr)

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    trials = optuna.load_study(study_name=study, storage=open_storage(str(store / "optuna.journal"))).trials
    states = ("COMPLETE", "PRUNED", "FAIL")
    counts = {s: sum(t.state.name == s for t in trials) for s in states}
    epochs = sum(int(t.user_attrs.get("epochs_run", 0)) for t in trials)
    values = [t.value for t in trials if t.state.name == "COMPLETE" and t.value is not None]
    return Result(budget, jobs, wall, parse_budget(budget), done.returncode, counts, epochs,
                  max(values) if values else None, load)


def table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [HEADER, *rows]) for i in range(len(HEADER))]
    lines = ["  ".join(h.rjust(w) for h, w in zip(HEADER, widths))]
    lines += ["  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budgets", nargs="+", default=["1m", "5m"], help="budgets to run (default: 1m 5m)")
    parser.add_argument("--jobs", nargs="+", type=int, default=[1, 2], help="worker counts to compare (default: 1 2)")
    parser.add_argument("--task", default="mnist1d")
    parser.add_argument("--store", type=Path, default=DEFAULT_STORE)
    args = parser.parse_args()
    for budget in args.budgets:
        parse_budget(budget)  # fail before any work on a bad budget

    print(f"machine: {machine()}", flush=True)
    store = args.store.resolve()
    prepare_store(args.task, store)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    results = []
    for budget in args.budgets:
        for jobs in args.jobs:
            study = f"bench-{args.task}-{budget}-j{jobs}-{stamp}"
            print(f"running {study} ...", flush=True)
            results.append(run_sweep(args.task, store, budget, jobs, study))
            print(table([results[-1].row()]), flush=True)

    print(f"\nkdsweep run on {args.task}; machine: {machine()}")
    print(table([r.row() for r in results]))
    for budget in args.budgets:
        by_jobs = {r.jobs: r for r in results if r.budget == budget}
        if 1 in by_jobs and 2 in by_jobs and by_jobs[1].trials:
            one, two = by_jobs[1], by_jobs[2]
            print(f"{budget}: --jobs 2 / --jobs 1 = {two.trials / two.wall_s / (one.trials / one.wall_s):.2f}x "
                  f"trials/h, {two.epochs / two.wall_s / max(one.epochs / one.wall_s, 1e-9):.2f}x epochs/h")


if __name__ == "__main__":
    main()
