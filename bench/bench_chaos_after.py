"""Kill the commands that follow a search, then count what survived: the figures of
docs/reliability.md ("After the search"). The companion of bench/bench_chaos.py, which does the
same to ``kdsweep run``.

One finished digits store (``kdsweep run --n-trials 4 --repeats 2``) lives through every kill:

- ``compress`` and ``federate``: SIGKILL or SIGTERM after a random delay (1 to 12 s from the start:
  imports, loading the student, the teacher, each step or round), and SIGKILL at each step boundary
  (``KDSWEEP_TEST_PAUSE_AT``: ``compress.started``, ``compress.prune``, ``compress.epoch``,
  ``compress.qat8``, ``federate.started``, ``federate.saved``). After each kill the same command
  runs again to its end: it must close what the kill left RUNNING, and a federated run must resume
  and log every round exactly once.
- ``export``: SIGKILL after a random delay; the ``--out`` file must be absent or whole (it reloads),
  and no store file but the MLflow database and the trial's ``export/`` artifacts may change.
- ``--jobs 2`` workers: a worker process SIGKILLed while it trains; the run must end with 0 RUNNING
  trials or runs and the lost trial failed as ``worker_lost``.
- copies and moves: ``cp -a`` the store and compress on the copy (the original must not change),
  ``mv`` it and export from it.

    python bench/bench_chaos_after.py [--kills 6] [--seed 0] [--store DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STUDY = "digits"
POINTS = {"compress": ("compress.started", "compress.prune", "compress.epoch", "compress.qat8"),
          "federate": ("federate.started", "federate.saved")}
ARGS = {"compress": ("compress", STUDY, "--epochs", "2"),
        "federate": ("federate", STUDY, "--clients", "3", "--rounds", "4")}


def kdsweep(*args: str, env: dict[str, str] | None = None, background: bool = False, cwd: Path | None = None):
    command = [sys.executable, "-m", "cli.main", *args]
    environ = {**{k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "KDSWEEP_STORE")},
               **(env or {})}
    if background:
        return subprocess.Popen(command, cwd=REPO, env=environ, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                text=True)
    return subprocess.run(command, cwd=cwd or REPO, env=environ, capture_output=True, text=True, timeout=600)


def runs(store: Path, kind: str | None = None) -> list:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{store / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(STUDY)
    where = f"tags.`kdsweep.kind` = '{kind}'" if kind else ""
    return client.search_runs([experiment.experiment_id], filter_string=where, max_results=10_000)


def kill_after(args: tuple[str, ...], store: Path, delay: float, sig: int) -> str:
    process = kdsweep(*args, "--store", str(store), background=True)
    try:
        process.wait(timeout=delay)
        return "ended first"
    except subprocess.TimeoutExpired:
        process.send_signal(sig)
        process.wait(timeout=120)
        return f"exit {process.returncode}"


def kill_at(args: tuple[str, ...], store: Path, point: str, scratch: Path) -> str:
    marker = scratch / f"paused-{time.monotonic_ns()}"
    process = kdsweep(*args, "--store", str(store), background=True,
                      env={"KDSWEEP_TEST_PAUSE_AT": point, "KDSWEEP_TEST_PAUSE_FILE": str(marker)})
    deadline = time.monotonic() + 180
    while not marker.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    if process.poll() is not None:
        return f"ended first ({process.returncode})"
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    return "killed"


def federated_rounds_ok(store: Path, rounds: int) -> tuple[int, int]:
    """(finished federated runs whose val_acc steps are exactly 1..rounds, finished federated runs)."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{store / 'mlflow.db'}")
    finished = [r for r in runs(store, "federate") if r.info.status == "FINISHED"]
    good = sum([m.step for m in client.get_metric_history(r.info.run_id, "val_acc")] == list(range(1, rounds + 1))
               for r in finished)
    return good, len(finished)


def campaign(command: str, store: Path, kills: int, rng: random.Random, scratch: Path) -> dict:
    steps = []
    for i in range(kills):
        sig = signal.SIGKILL if i % 2 == 0 else signal.SIGTERM
        delay = rng.uniform(1, 12)
        steps.append({"how": f"{signal.Signals(sig).name} after {delay:.1f}s",
                      "result": kill_after(ARGS[command], store, delay, sig)})
        steps.append({"how": "rerun", "result": kdsweep(*ARGS[command], "--store", str(store)).returncode})
    for point in POINTS[command]:
        steps.append({"how": f"SIGKILL at {point}", "result": kill_at(ARGS[command], store, point, scratch)})
        steps.append({"how": "rerun", "result": kdsweep(*ARGS[command], "--store", str(store)).returncode})
    left = [r for r in runs(store, command) if r.info.status == "RUNNING"]
    figures = {"kills": sum(1 for s in steps if s["how"] != "rerun" and "ended first" not in str(s["result"])),
               "reruns_failed": sum(1 for s in steps if s["how"] == "rerun" and s["result"] != 0),
               "runs": len(runs(store, command)), "left_running": len(left),
               "closed_killed": sum(r.info.status == "KILLED" for r in runs(store, command)),
               "steps": steps}
    if command == "federate":
        figures["rounds_exactly_once"], figures["finished"] = federated_rounds_ok(store, 4)
    return figures


def export_campaign(store: Path, kills: int, rng: random.Random, scratch: Path) -> dict:
    import torch

    protected = {p: p.stat().st_mtime_ns for p in store.rglob("*") if p.is_file()
                 and "export" not in p.parts and p.name not in ("mlflow.db", "mlflow.db-journal")}
    whole = absent = torn = 0
    for i in range(kills):
        out = scratch / f"export-{i}.pt2"
        kill_after(("export", STUDY, "--out", str(out)), store, rng.uniform(2, 10), signal.SIGKILL)
        if not out.exists():
            absent += 1
            continue
        try:
            torch.export.load(str(out))
            whole += 1
        except Exception:
            torn += 1
    changed = [str(p) for p, mtime in protected.items() if not p.exists() or p.stat().st_mtime_ns != mtime]
    leftovers = [p.name for p in scratch.glob(".export-*.tmp.pt2")]
    return {"kills": kills, "out_whole": whole, "out_absent": absent, "out_torn": torn,
            "store_files_changed": changed, "staged_files_left": len(leftovers)}


def worker_campaign(template: Path, kills: int, scratch: Path) -> dict:
    import optuna

    from sweeps.search.leases import LEASE_ATTR
    from sweeps.tracking.storage import open_storage

    sweep = scratch / "workers.yaml"
    sweep.write_text("train:\n  epochs: 8\n  batch_size: 32\n  patience: 0\n")
    results = []
    for i in range(kills):
        store = scratch / f"workers-{i}"
        shutil.copytree(template, store, ignore=shutil.ignore_patterns("mlflow.db", "optuna.journal*", "artifacts",
                                                                       "checkpoints", "federated"))
        study = f"workers{i}"
        process = kdsweep("run", "--task", "digits", "--config", str(sweep), "--store", str(store), "--study", study,
                          "--jobs", "2", "--n-trials", "4", "--repeats", "0", "--budget", "300s", background=True)
        victim = None
        deadline = time.monotonic() + 240
        while victim is None and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.3)
            try:
                trials = optuna.load_study(study_name=study, storage=open_storage(str(store / "optuna.journal"))).trials
            except (KeyError, Exception):
                continue
            training = [t for t in trials if t.state.name == "RUNNING" and t.user_attrs.get("epoch", 0) >= 1
                        and LEASE_ATTR in t.user_attrs]
            if training:
                victim = training[0].user_attrs[LEASE_ATTR]["pid"]
                os.kill(victim, signal.SIGKILL)
        code = process.wait(timeout=400)
        trials = optuna.load_study(study_name=study, storage=open_storage(str(store / "optuna.journal"))).trials
        states = Counter(t.state.name for t in trials)
        lost = [t for t in trials if t.user_attrs.get(LEASE_ATTR, {}).get("pid") == victim]
        from mlflow import MlflowClient

        client = MlflowClient(tracking_uri=f"sqlite:///{store / 'mlflow.db'}")
        experiment = client.get_experiment_by_name(study)
        running_runs = len(client.search_runs([experiment.experiment_id], "attributes.status = 'RUNNING'"))
        results.append({"exit": code, "killed_pid": victim, "states": dict(states),
                        "lost_failed_worker_lost": all(t.state.name == "FAIL" and
                                                       t.user_attrs.get("stop_reason") == "worker_lost" for t in lost)
                        and bool(lost), "running_runs": running_runs})
    return {"kills": sum(r["killed_pid"] is not None for r in results),
            "left_running": sum(r["states"].get("RUNNING", 0) + r["running_runs"] for r in results),
            "lost_trials_failed_worker_lost": sum(r["lost_failed_worker_lost"] for r in results),
            "exits": [r["exit"] for r in results], "runs": results}


def copy_and_move(store: Path, scratch: Path) -> dict:
    copy, moved_from, moved = scratch / "copy", scratch / "to-move", scratch / "moved"
    shutil.copytree(store, copy)
    shutil.copytree(store, moved_from)
    before = {p: p.stat().st_mtime_ns for p in store.rglob("*") if p.is_file()}
    compressed = kdsweep("compress", STUDY, "--prune", "0", "--epochs", "1", "--store", str(copy)).returncode
    changed = [str(p) for p, m in before.items() if not p.exists() or p.stat().st_mtime_ns != m]
    moved_from.rename(moved)
    exported = kdsweep("export", STUDY, "--out", str(scratch / "from-moved.pt2"), "--store", str(moved)).returncode
    federated = kdsweep("federate", STUDY, "--rounds", "1", "--clients", "2", "--store", str(moved)).returncode
    return {"compress_on_copy_exit": compressed, "original_files_changed": changed,
            "export_from_moved_exit": exported, "federate_on_moved_exit": federated}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=6, help="random kills per command (half SIGKILL, half SIGTERM)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--store", type=Path, default=None, help="work folder (default: a temporary one)")
    options = parser.parse_args()
    rng = random.Random(options.seed)
    scratch = options.store or Path(tempfile.mkdtemp(prefix="kdsweep-chaos-after-"))
    store = scratch / "store"
    started = time.monotonic()
    done = kdsweep("run", "--task", "digits", "--n-trials", "4", "--repeats", "2", "--budget", "5m", "--study", STUDY,
                   "--store", str(store))
    if done.returncode != 0:
        sys.exit(f"the sweep that makes the store failed:\n{done.stderr[-3000:]}")
    template = scratch / "template"
    shutil.copytree(store, template)
    figures = {
        "copy_and_move": copy_and_move(store, scratch),
        "compress": campaign("compress", store, options.kills, rng, scratch),
        "federate": campaign("federate", store, options.kills, rng, scratch),
        "export": export_campaign(store, options.kills, rng, scratch),
        "workers": worker_campaign(template, max(2, options.kills // 2), scratch),
        "seconds": round(time.monotonic() - started, 1),
    }
    (scratch / "chaos_after.json").write_text(json.dumps(figures, indent=2, default=str))
    for name in ("compress", "federate"):
        f = figures[name]
        extra = (f", {f['rounds_exactly_once']}/{f['finished']} finished runs log each round exactly once"
                 if name == "federate" else "")
        print(f"{name}: {f['kills']} kills, {f['reruns_failed']} reruns failed, {f['left_running']} of {f['runs']} "
              f"runs left RUNNING, {f['closed_killed']} closed KILLED{extra}")
    e = figures["export"]
    print(f"export: {e['kills']} kills, --out whole {e['out_whole']} / absent {e['out_absent']} / torn {e['out_torn']}, "
          f"{len(e['store_files_changed'])} store files changed, {e['staged_files_left']} staged files left")
    w = figures["workers"]
    print(f"--jobs 2 workers: {w['kills']} killed while training, exits {w['exits']}, {w['left_running']} trials or "
          f"runs left RUNNING, {w['lost_trials_failed_worker_lost']} lost trials failed as worker_lost")
    c = figures["copy_and_move"]
    print(f"copy: compress exit {c['compress_on_copy_exit']}, {len(c['original_files_changed'])} original files "
          f"changed; move: export exit {c['export_from_moved_exit']}, federate exit {c['federate_on_moved_exit']}")
    print(f"{figures['seconds']:.0f} s; details in {scratch / 'chaos_after.json'}")


if __name__ == "__main__":
    main()
