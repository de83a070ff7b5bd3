"""How fast the query commands answer on a study of 1000 trials, and how fast --help is.

What it builds, in a temporary store (deleted at exit unless ``--keep DIR``), without training:

* an Optuna study of ``--trials`` trials (default 1000) in a journal file, written op by op the way
  a sweep writes it: each param suggestion, one ``report`` and one ``epoch`` user attr per epoch, a
  lease, the final user attrs, the ``tell``. About 45 % COMPLETE (10-30 epochs), 50 % PRUNED (3-8),
  5 % FAIL. The ops go through an in-memory journal backend and are written to the file at once:
  the file backend's fsync per op would take minutes;
* one MLflow run per trial in the embedded SQLite store, as ``sweeps.search.trial`` logs it: params, tags,
  eight metrics per epoch, the final metrics (one ``log_batch`` per run), plus the study's parent
  run with a KD verdict and its six repeat runs (three paired seeds). No checkpoint files (the query commands never read them).

What it times (each ``--repeats`` times; the table gives the best and the median):

* ``kdsweep --help`` and ``kdsweep trials --help`` in a fresh process (target < 0.5 s);
* ``kdsweep trials bench`` end to end in a fresh process, as a table (to a pipe), CSV and JSON, and
  with ``--where/--sort/--limit`` (target < 2 s); ``kdsweep studies`` and ``kdsweep pareto``;
* in one warm process: ``sweeps.trials("bench")`` and its parts: the Optuna journal replay, the
  bulk MLflow read by SQL, and the same read through ``MlflowClient.search_runs`` for comparison.

    python bench/bench_query.py [--trials 1000] [--repeats 5] [--keep DIR | --reuse DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
STUDY = "bench"
_SPACE = {"temperature": (1.0, 20.0, True), "alpha": (0.0, 1.0, False), "ratio": (0.05, 1.0, True),
          "lr": (1e-4, 3e-2, True)}
_EPOCH_METRICS = ("train_loss", "kd_loss", "ce_loss", "val_loss", "val_acc", "lr", "epoch_time_s", "samples_per_s")


def build_study(root: Path, n_trials: int, seed: int = 0, tracking_uri: str | None = None) -> None:
    """Write the Optuna journal and the MLflow runs of a ``n_trials`` study under ``root`` (the runs
    to ``tracking_uri`` instead when given: bench/bench_query_server.py)."""
    import optuna
    from mlflow.entities import Metric, Param, RunTag
    from optuna.distributions import FloatDistribution
    from optuna.storages.journal import BaseJournalBackend, JournalStorage
    from optuna.trial import TrialState

    from sweeps.tracking.store import Store

    class MemoryBackend(BaseJournalBackend):
        def __init__(self) -> None:
            self.logs: list[dict[str, Any]] = []

        def read_logs(self, log_number_from: int) -> Iterator[dict[str, Any]]:
            return iter(self.logs[log_number_from:])

        def append_logs(self, logs: list[dict[str, Any]]) -> None:
            self.logs.extend(logs)

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    store = Store.resolve(root, tracking_uri)
    client = store.client()
    experiment = store.experiment(client, STUDY)
    space = {k: FloatDistribution(lo, hi, log=log) for k, (lo, hi, log) in _SPACE.items()}
    parent = client.create_run(experiment, run_name=STUDY, tags={"kdsweep.kind": "study", "optuna.study": STUDY})
    backend = MemoryBackend()
    study = optuna.create_study(study_name=STUDY, storage=JournalStorage(backend), direction="maximize",
                                sampler=optuna.samplers.RandomSampler(seed=seed))
    study.set_user_attr("kdsweep.space", {k: f"float[{lo:g}, {hi:g}]{' log' if log else ''}"
                                          for k, (lo, hi, log) in _SPACE.items()})
    study.set_user_attr("kdsweep.task", "digits")
    now = int(time.time() * 1000)
    best = (-1.0, 0, {})
    for number in range(n_trials):
        trial = study.ask(space)
        params = trial.params
        run = client.create_run(experiment, run_name=f"trial-{number:04d}", tags={
            "kdsweep.kind": "trial", "optuna.study": STUDY, "optuna.trial_number": str(number),
            "mlflow.parentRunId": parent.info.run_id})
        trial.set_user_attr("mlflow_run_id", run.info.run_id)
        trial.set_user_attr("kdsweep.lease", {"host": "bench", "pid": 1, "heartbeat": time.time()})
        roll = rng.random()
        state = "FAIL" if roll < 0.05 else "PRUNED" if roll < 0.55 else "COMPLETE"
        epochs = rng.randint(2, 3) if state == "FAIL" else rng.randint(3, 8) if state == "PRUNED" else rng.randint(10, 30)
        hidden = max(1, round(256 * params["ratio"]))
        student_params = 64 * hidden + hidden + hidden * 10 + 10
        ceiling = 0.985 - 0.25 * (1 - params["ratio"]) ** 6 - 0.02 * abs(params["alpha"] - 0.8)
        metrics, val = [], 0.1
        for epoch in range(1, epochs + 1):
            val = min(ceiling, val + (ceiling - val) * 0.35) + rng.gauss(0, 0.004)
            epoch_s = 0.015 + 0.00002 * hidden + abs(rng.gauss(0, 0.003))
            values = dict(zip(_EPOCH_METRICS, (1 - val, 0.5, 1 - val, 1 - val, val, params["lr"], epoch_s, 1078 / epoch_s)))
            metrics += [Metric(k, v, now, epoch) for k, v in values.items()]
            trial.report(val, epoch)
            trial.set_user_attr("epoch", epoch)
        tags = [RunTag("state", state)]
        if state != "FAIL":
            test_acc = val + rng.gauss(0, 0.006)
            train_s = epochs * 0.03
            final = {"best_val_acc": val, "test_acc": test_acc, "teacher_test_acc": 0.9722, "retention": test_acc / 0.9722,
                     "train_time_s": train_s, "student_params": student_params, "student_size_bytes": 4 * student_params,
                     "best_epoch": epochs, "epochs_run": epochs}
            metrics += [Metric(k, float(v), now, 0) for k, v in final.items()]
            stop = "pruned" if state == "PRUNED" else "early_stopped"
            tags.append(RunTag("stop_reason", stop))
            for key, value in {"stop_reason": stop, **{k: final[k] for k in ("test_acc", "best_val_acc", "retention",
                               "student_params", "student_size_bytes", "train_time_s", "epochs_run")},
                               "wall_time_s": train_s + 0.15, "epoch_time_s": 0.02,
                               "checkpoint_uri": f"runs:/{run.info.run_id}/checkpoint/student.pt"}.items():
                trial.set_user_attr(key, value)
        client.log_batch(run.info.run_id, metrics=metrics, tags=tags,
                         params=[Param(k, str(v)) for k, v in {"task": "digits", **params, "epochs": 40}.items()])
        client.set_terminated(run.info.run_id, "FINISHED" if state != "FAIL" else "FAILED")
        if state == "COMPLETE":
            study.tell(trial, val)
            best = max(best, (val, number, final))
        else:
            study.tell(trial, state=TrialState.PRUNED if state == "PRUNED" else TrialState.FAIL)
    for repeat in (1, 2, 3):  # the verdict's paired repeats, as sweeps.verdict.repeats logs them
        for arm, shift in (("kd", 0.0), ("nokd", -0.02)):
            run_ = client.create_run(experiment, run_name=f"repeat-{repeat}-{arm}", tags={
                "kdsweep.kind": "repeat", "kdsweep.arm": arm, "kdsweep.repeat": str(repeat), "optuna.study": STUDY,
                "kdsweep.repeat_of_trial": str(best[1]), "state": "COMPLETE"})
            client.log_batch(run_.info.run_id, metrics=[Metric("test_acc", best[2]["test_acc"] + shift, now, 0)])
            client.set_terminated(run_.info.run_id, "FINISHED")
    verdict = {"teacher_test_acc": 0.9722, "distilled_test_acc": best[2]["test_acc"],
               "nokd_test_acc": best[2]["test_acc"] - 0.02, "kd_gain": 0.02, "kd_gain_ci95_low": 0.01,
               "kd_gain_ci95_high": 0.03, "kd_repeats": 3, "best_trial": best[1]}
    client.log_batch(parent.info.run_id, metrics=[Metric(k, float(v), now, 0) for k, v in verdict.items()],
                     tags=[RunTag("kd_verdict", "helps"), RunTag("kd_verdict_trial", str(best[1]))])
    with open(root / "optuna.journal", "w", encoding="utf-8") as journal:
        journal.writelines(json.dumps(log, separators=(",", ":")) + "\n" for log in backend.logs)


def timed(action: Callable[[], Any], repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        action()
        times.append(time.perf_counter() - started)
    return times


def cli(*args: str, cwd: Path) -> Callable[[], None]:
    """A fresh ``kdsweep`` process (the installed script, as a user runs it) with stdout to a pipe."""
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "KDSWEEP_STORE")}
    script = shutil.which("kdsweep", path=str(Path(sys.executable).parent))
    command = [script, *args] if script else [sys.executable, "-m", "cli.main", *args]
    return lambda: subprocess.run(command, cwd=cwd, env=env, check=True, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE)


def machine() -> str:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor() or "unknown CPU")
    import mlflow
    import optuna
    import pandas

    return (f"{model}, {os.cpu_count()} cores; Python {platform.python_version()}, pandas {pandas.__version__}, "
            f"optuna {optuna.__version__}, mlflow {mlflow.__version__}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--keep", type=Path, help="build the store in this folder and keep it")
    parser.add_argument("--reuse", type=Path, help="time a store kept earlier with --keep (no build)")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    if args.reuse is not None:
        report(args.reuse / "store", args.repeats)
        return
    root = (args.keep or Path(tempfile.mkdtemp(prefix="kdsweep-bench-query-"))) / "store"
    try:
        started = time.perf_counter()
        build_study(root, args.trials)
        print(f"built a {args.trials}-trial study in {time.perf_counter() - started:.1f} s: "
              f"journal {(root / 'optuna.journal').stat().st_size / 1e6:.1f} MB "
              f"({sum(1 for _ in open(root / 'optuna.journal'))} ops), "
              f"mlflow.db {(root / 'mlflow.db').stat().st_size / 1e6:.1f} MB")
        report(root, args.repeats)
    finally:
        if args.keep is None:
            shutil.rmtree(root.parent, ignore_errors=True)


def report(root: Path, repeats: int) -> None:
    from sweeps import trials
    from sweeps.query._runs import experiment_runs
    from sweeps.query.trials import Sources

    def run(*args: str) -> list[float]:
        return timed(cli(*args, "--store", str(root), cwd=root.parent), repeats)

    rows: list[tuple[str, list[float], str]] = [
        ("kdsweep --help", timed(cli("--help", cwd=root.parent), repeats), "< 0.5 s"),
        ("kdsweep trials --help", timed(cli("trials", "--help", cwd=root.parent), repeats), "< 0.5 s"),
        (f"kdsweep trials {STUDY} (table)", run("trials", STUDY), "< 2 s"),
        (f"kdsweep trials {STUDY} -f csv", run("trials", STUDY, "-f", "csv"), "< 2 s"),
        (f"kdsweep trials {STUDY} -f json", run("trials", STUDY, "-f", "json"), "< 2 s"),
        (f"kdsweep trials {STUDY} --where ... --sort -test_acc --limit 10",
         run("trials", STUDY, "--where", "retention > 0.95 and student_params < 20000", "--sort", "-test_acc",
             "--limit", "10"), "< 2 s"),
        ("kdsweep studies", run("studies"), ""),
        (f"kdsweep pareto {STUDY}", run("pareto", STUDY), ""),
    ]
    sources = Sources.resolve(store=root)
    trials(STUDY, store=root)  # warm: imports and file cache
    rows += [
        (f"API: sweeps.trials({STUDY!r}), warm process", timed(lambda: trials(STUDY, store=root), repeats), ""),
        ("  part: Optuna journal replay + get_trials",
         timed(lambda: sources.study(STUDY).get_trials(deepcopy=False), repeats), ""),
        ("  part: MLflow runs in bulk, by SQL", timed(lambda: experiment_runs(sources.store, STUDY), repeats), ""),
        ("  for comparison: the same via MlflowClient.search_runs",
         timed(lambda: experiment_runs(sources.store, STUDY, client=sources.store.client()), repeats), ""),
    ]
    print(f"\nmachine: {machine()}\n")
    width = max(len(name) for name, _, _ in rows)
    print(f"{'what':<{width}}  {'best s':>7}  {'median s':>8}  target")
    for name, times, target in rows:
        met = "" if not target else ("  met" if statistics.median(times) < float(target.split()[1]) else "  MISSED")
        print(f"{name:<{width}}  {min(times):7.3f}  {statistics.median(times):8.3f}  {target}{met}")


if __name__ == "__main__":
    main()
