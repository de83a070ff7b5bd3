"""Search efficiency: kdsweep's default search against plain random search, and a pareto search
against an accuracy one, on MNIST-1D under the same wall-clock budget (docs/benchmarks.md).

Arms (each ``kdsweep run --repeats 0`` on the same task, space and trainer, from a store whose
teacher and teacher-output cache are ready, so the whole budget goes to trials):

- ``tpe``: the default, TPE sampler + median pruner, ``--objective accuracy``;
- ``random``: Optuna's RandomSampler, no pruning;
- ``pareto``: ``--objective pareto --cost params`` (TPE, no pruning: Optuna cannot prune it);
- ``data``: the default with ``--fidelity data:0.3``: each trial's first 3 epochs (the median
  pruner's first look) train on 30% of the labelled data, only the trials it keeps on all of it;
- ``constant``, ``schedules``, ``ensemble``, ``online``: the sweep files of configs/ (MNIST-1D, 40
  epochs, patience 8): the four default dimensions alone, and with temperature/alpha schedules,
  with 1 to 3 teachers, with an EMA teacher (``--compare schedules:constant ensemble:constant
  online:constant``). The template store holds all three MNIST-1D teachers, so no arm trains one.

The arms of one comparison run at the same time, each pinned to its own core (``taskset``) with one
torch thread, so machine noise hits both alike; every seed is a new pair of studies.

Figures per seed:

- **trial-seconds to the random arm's best**: the summed wall time of the trials each arm ran,
  in the order they finished, until its first trial reached the random arm's final best
  validation accuracy (``inf`` when it never did). The goal for ``tpe`` is at most a third of
  ``random``'s; the same to a fixed validation accuracy of 0.96;
- **hypervolume** of the front of (validation accuracy, parameters), against the reference point
  (accuracy 0, the largest student's parameters), parameters on a log scale, normalised to [0, 1].

    python bench/bench_search.py [--budget 10m] [--seeds 0 1 2] [--compare tpe:random pareto:tpe data:tpe]
                                 [--task mnist1d]
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_TASK = "mnist1d"
ARMS = {
    "tpe": ["--sampler", "tpe", "--pruner", "median"],
    "random": ["--sampler", "random", "--pruner", "none"],
    "pareto": ["--objective", "pareto", "--cost", "params", "--sampler", "tpe"],
    "data": ["--sampler", "tpe", "--pruner", "median", "--fidelity", "data:0.3"],
    # Seed 003's knobs (docs/sweeps.md), each against the same search with T and alpha constant:
    # the sweep files differ only in what they add to the space.
    "constant": ["--config", "configs/mnist1d-default.yaml"],
    "schedules": ["--config", "configs/mnist1d-schedules.yaml"],
    "ensemble": ["--config", "configs/mnist1d-ensemble.yaml"],
    "online": ["--config", "configs/mnist1d-online.yaml"],
}
THRESHOLD = 0.96  # a fixed validation accuracy every arm is also timed to


def prepare_template(root: Path, task: str) -> Path:
    """A store with the task's teacher trained and its outputs cached."""
    template = root / "template"
    sys.path.insert(0, str(REPO))
    from kdcore import get_task

    teachers = len(get_task(task).teachers())  # the ensemble arm's too: no arm trains a teacher
    subprocess.run([sys.executable, "-m", "cli.main", "teacher", "--task", task, "--store", str(template),
                    "--teachers", str(teachers)], cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    return template


def run_pair(arms: tuple[str, str], seed: int, budget: str, template: Path, root: Path, task: str) -> dict[str, Path]:
    """Both arms at once, each on its own core; returns each arm's store."""
    stores, processes = {}, []
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for core, arm in enumerate(arms):
        store = root / f"{arm}-vs-{arms[1 - core]}-seed{seed}"
        shutil.copytree(template, store)
        stores[arm] = store
        pin = ["taskset", "-c", str(core % (os.cpu_count() or 1))] if shutil.which("taskset") else []
        command = [*pin, sys.executable, "-m", "cli.main", "run", "--task", task, "--study", arm, "--seed",
                   str(seed), "--budget", budget, "--repeats", "0", "--store", str(store), *ARMS[arm]]
        log = open(store / "run.log", "w")
        processes.append((subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT), log))
    for process, log in processes:
        process.wait()
        log.close()
        if process.returncode not in (0, 1):
            raise SystemExit(f"kdsweep run exited {process.returncode}: see {log.name}")
    return stores


def finished_trials(store: Path, study: str):
    """The study's trials with a duration, in the order they finished."""
    import pandas as pd

    from sweeps import trials

    frame = trials(study, store=store)
    frame = frame[frame["duration_s"].notna()].copy()
    frame["finished"] = frame["started"] + pd.to_timedelta(frame["duration_s"], unit="s")
    return frame.sort_values("finished", kind="stable")


def best_val(frame) -> float:
    complete = frame[(frame["state"] == "COMPLETE") & frame["feasible"]]
    return float(complete["best_val_acc"].max()) if len(complete) else float("nan")


def chosen_test(frame) -> float:
    """Test accuracy of the trial a user would pick: the best on validation (``sweeps.best``)."""
    from kdcore import ConfigError
    from sweeps import best

    try:
        return float(best(frame)["test_acc"])
    except ConfigError:  # no COMPLETE trial
        return float("nan")


def seconds_to_reach(frame, target: float) -> float:
    spent = 0.0
    for _, row in frame.iterrows():
        spent += float(row["duration_s"])
        if row["state"] == "COMPLETE" and row["best_val_acc"] >= target:
            return spent
    return math.inf


def hypervolume(frame, largest_params: float) -> float:
    """Area dominated by the (max accuracy, min log-params) front, normalised to [0, 1]."""
    complete = frame[(frame["state"] == "COMPLETE") & frame["feasible"]].dropna(subset=["student_params"])
    if complete.empty:
        return 0.0
    top = math.log10(largest_params)
    points = sorted((math.log10(p) / top, a) for p, a in zip(complete["student_params"], complete["best_val_acc"]))
    area, best_acc = 0.0, 0.0
    edges = [x for x, _ in points] + [1.0]
    for (x, acc), right in zip(points, edges[1:]):
        best_acc = max(best_acc, acc)
        area += (right - x) * best_acc
    return area


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget", default="10m")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--compare", nargs="+", default=["tpe:random", "pareto:tpe"],
                        help="pairs of arms run side by side (default: tpe:random pareto:tpe; also: data:tpe)")
    parser.add_argument("--keep", help="keep the stores in this folder")
    parser.add_argument("--task", default=DEFAULT_TASK, help="a built-in task or package.module:factory (default: mnist1d)")
    args = parser.parse_args()
    pairs = [tuple(p.split(":")) for p in args.compare]
    for pair in pairs:
        if len(pair) != 2 or not set(pair) <= set(ARMS):
            parser.error(f"--compare {':'.join(pair)}: give two of {', '.join(ARMS)} as A:B")

    sys.path.insert(0, str(REPO))
    import kdcore

    largest = kdcore.count_parameters(kdcore.get_task(args.task).build_student(1.0))[0]
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="kdsweep-bench-search-"))
    root.mkdir(parents=True, exist_ok=True)
    template = prepare_template(root, args.task)
    started = time.monotonic()
    print(f"budget {args.budget} per arm, seeds {args.seeds}, {os.cpu_count()} cores; arms side by side, one core each\n")
    for pair in pairs:
        rows = []
        for seed in args.seeds:
            stores = run_pair(pair, seed, args.budget, template, root, args.task)
            frames = {arm: finished_trials(stores[arm], arm) for arm in pair}
            target = best_val(frames[pair[1]])
            rows.append({arm: {"trials": len(frames[arm]), "best": best_val(frames[arm]),
                               "chosen_test": chosen_test(frames[arm]),
                               "to_target": seconds_to_reach(frames[arm], target),
                               "to_threshold": seconds_to_reach(frames[arm], THRESHOLD),
                               "pruned": int((frames[arm]["state"] == "PRUNED").sum()),
                               "hv": hypervolume(frames[arm], largest)} for arm in pair} | {"target": target})
            a, b = pair
            print(f"{a} vs {b}, seed {seed}: target {target:.4f} ({b}'s best); trial-s to reach it "
                  f"{rows[-1][a]['to_target']:.0f} vs {rows[-1][b]['to_target']:.0f}; to {THRESHOLD} {rows[-1][a]['to_threshold']:.0f} vs "
                  f"{rows[-1][b]['to_threshold']:.0f}; trials {rows[-1][a]['trials']} vs "
                  f"{rows[-1][b]['trials']}; best val {rows[-1][a]['best']:.4f} vs {rows[-1][b]['best']:.4f}; "
                  f"hypervolume {rows[-1][a]['hv']:.4f} vs {rows[-1][b]['hv']:.4f}", flush=True)
        a, b = pair
        ratios = [r[a]["to_target"] / r[b]["to_target"] for r in rows if r[b]["to_target"] > 0]
        print(f"\n| {a} vs {b} ({len(rows)} seeds) | {a} | {b} |\n|---|---|---|")
        for key, label in (("trials", "trials"), ("pruned", "of which pruned"), ("best", "best validation accuracy"),
                           ("chosen_test", "test accuracy of the trial chosen on validation"),
                           ("to_target", f"trial-seconds to {b}'s final best"),
                           ("to_threshold", f"trial-seconds to validation accuracy {THRESHOLD}"),
                           ("hv", "hypervolume (val acc, log params)")):
            cells = [", ".join(f"{r[arm][key]:.4g}" for r in rows) for arm in pair]
            print(f"| {label} (per seed) | {cells[0]} | {cells[1]} |")
        if len(rows) >= 2:  # the paired difference over seeds, with its 95% t interval
            from sweeps.verdict.paired import paired_interval

            for key, label in (("best", "best validation accuracy"), ("chosen_test", "chosen trial's test accuracy")):
                got = paired_interval([r[a][key] for r in rows], [r[b][key] for r in rows])
                print(f"{a} - {b}, {label}: {got.mean:+.4f} (95% CI {got.low:+.4f} to {got.high:+.4f}, "
                      f"{got.n} seeds)")
        finite = [x for x in ratios if math.isfinite(x)]
        print(f"\n{a}/{b} trial-seconds ratio per seed: {', '.join(f'{x:.2f}' for x in ratios)}"
              + (f"; median {statistics.median(finite):.2f}" if finite else "") + "\n", flush=True)
    print(f"total wall time {time.monotonic() - started:.0f} s; stores in {root}")
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
