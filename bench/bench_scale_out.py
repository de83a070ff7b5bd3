"""Trials per hour with 1, 2 and 4 workers: the scale-out set-up (PostgreSQL storage, MLflow
server on PostgreSQL) against the default (journal file, embedded SQLite store) (docs/scale-out.md).

Each arm is one study of the same task and search, ``--repeats 0``, ``--budget`` long, from a store
whose teacher and cache are ready:

- ``journal``: ``kdsweep run --jobs 1`` plus N-1 ``kdsweep worker`` processes on the store's
  journal and SQLite (one host: the workers share the store folder);
- ``postgres``: the same processes on a throwaway PostgreSQL cluster and an ``mlflow server`` on
  it with ``--serve-artifacts`` (the test suite's servers, tests/_servers.py), each worker with a
  store folder of its own, as on another host.

``trials/h`` counts the trials that finished (COMPLETE, PRUNED, FAIL) per hour of the run's wall
time; ``epochs/h`` the epochs they trained. All processes share this machine's cores, so beyond
the core count the figure shows what the storage costs, not what more hosts would give.

    python bench/bench_scale_out.py [--budget 90s] [--workers 1 2 4] [--task digits]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

SWEEP = "space:\n  ratio: [0.25, 0.5]\n  lr: {low: 0.003, high: 0.03, log: true}\ntrain:\n  epochs: 12\n  patience: 4\n"


def kdsweep(*args: str) -> list[str]:
    return [sys.executable, "-m", "cli.main", *args]


def run_arm(name: str, workers: int, budget: str, task: str, template: Path, root: Path,
            storage: str | None, tracking: str | None) -> dict:
    from sweeps import trials

    folder = root / f"{name}-{workers}"
    store = folder / "store"
    shutil.copytree(template, store)
    sweep = folder / "sweep.yaml"
    sweep.write_text(SWEEP)
    study = f"{name}{workers}"
    where = [*(["--storage", storage] if storage else []), *(["--tracking-uri", tracking] if tracking else [])]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    started = time.monotonic()
    run = subprocess.Popen(kdsweep("run", "--task", task, "--config", str(sweep), "--study", study, "--budget", budget,
                                   "--repeats", "0", "--store", str(store), *where),
                           cwd=REPO, env=env, stdout=open(folder / "run.log", "w"), stderr=subprocess.STDOUT)
    storage_url = storage or str(store / "optuna.journal")
    _wait_for_plan(storage_url, study, run)
    joined = []
    for i in range(workers - 1):
        own = store if storage is None else folder / f"worker{i}"  # one host shares; other hosts do not
        joined.append(subprocess.Popen(
            kdsweep("worker", "--study", study, "--storage", storage_url, "--store", str(own),
                    *(["--tracking-uri", tracking] if tracking else [])),
            cwd=REPO, env={**env, "KDSWEEP_HOST": f"{name}-worker{i}" if storage else ""},
            stdout=open(folder / f"worker{i}.log", "w"), stderr=subprocess.STDOUT))
    run.wait()
    wall = time.monotonic() - started
    for process in joined:
        process.wait(timeout=120)
    frame = trials(study, store=store, storage=storage_url, tracking_uri=tracking)
    finished = frame[frame["state"].isin(["COMPLETE", "PRUNED", "FAIL"])]
    return {"arm": name, "workers": workers, "trials": len(finished), "wall_s": wall,
            "trials_per_h": len(finished) / wall * 3600, "epochs_per_h": finished["epochs_run"].sum() / wall * 3600,
            "exit": [run.returncode, *(p.returncode for p in joined)]}


def _wait_for_plan(storage_url: str, study: str, run: subprocess.Popen) -> None:
    """Workers join once the run has stored its plan in the study."""
    from sweeps.tracking.storage import open_storage

    while run.poll() is None:
        try:
            if any(s.study_name == study and "kdsweep.plan" in s.user_attrs
                   for s in open_storage(storage_url).get_all_studies()):
                return
        except Exception:
            pass
        time.sleep(0.5)
    raise SystemExit(f"kdsweep run exited {run.returncode} before its study was ready")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget", default="90s")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--task", default="digits")
    args = parser.parse_args()

    from _servers import MlflowServer, Postgres

    from bench_sweep import machine

    root = Path(tempfile.mkdtemp(prefix="kdsweep-bench-scale-"))
    template = root / "template"
    subprocess.run(kdsweep("teacher", "--task", args.task, "--store", str(template)), cwd=REPO, check=True,
                   stdout=subprocess.DEVNULL)
    postgres = Postgres().start()
    server = None
    try:
        print(f"{machine()}\nbudget {args.budget} per arm, task {args.task}\n", flush=True)
        print("| storage | workers | trials | trials/h | epochs/h | exit codes |\n|---|---|---|---|---|---|")
        results = []
        for workers in args.workers:
            for name in ("journal", "postgres"):
                storage = tracking = None
                if name == "postgres":
                    storage = postgres.create_database(f"optuna{workers}")
                    if server is not None:
                        server.stop()
                    server = MlflowServer(postgres.create_database(f"mlflow{workers}"),
                                          root / f"artifacts{workers}").wait_ready()
                    tracking = server.url
                result = run_arm(name, workers, args.budget, args.task, template, root, storage, tracking)
                results.append(result)
                print(f"| {name} | {workers} | {result['trials']} | {result['trials_per_h']:.0f} | "
                      f"{result['epochs_per_h']:.0f} | {result['exit']} |", flush=True)
    finally:
        if server is not None:
            server.stop()
        postgres.stop()
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
