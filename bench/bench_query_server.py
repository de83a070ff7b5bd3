"""`kdsweep trials` on a study of 10,000 trials in PostgreSQL, its runs on an MLflow server
(docs/scale-out.md), against the same study on the embedded store (journal + SQLite).

It builds the study of bench/bench_query.py (trials with per-epoch metrics, states, leases, the
verdict's repeat runs) once: the Optuna trials in a journal, then copied into a throwaway
PostgreSQL cluster (``optuna.copy_study``); the MLflow runs written straight into the PostgreSQL
database an ``mlflow server`` (``--serve-artifacts``) then serves; with ``--embedded``, once
more into a local journal and SQLite store (about 10 minutes more at 10,000 trials). It times
``kdsweep trials bench`` in a fresh process on each: with the runs read through the server's REST
API (``--tracking-uri http://...``), and from the server's database (``--tracking-uri
postgresql://...``, read by SQL like the embedded SQLite file).

    python bench/bench_query_server.py [--trials 10000] [--repeats 3] [--embedded]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO / "tests"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--embedded", action="store_true", help="also build and time the embedded store")
    parser.add_argument("--profile", action="store_true",
                        help="also profile sweeps.trials in this process (runs from the server's database)")
    args = parser.parse_args()

    import optuna
    from _servers import MlflowServer, Postgres
    from bench_query import STUDY, build_study, cli, machine, timed

    from sweeps.tracking.storage import open_storage

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    root = Path(tempfile.mkdtemp(prefix="kdsweep-bench-query-server-"))
    postgres = Postgres().start()
    server = None
    try:
        storage, backend = postgres.create_database("optuna"), postgres.create_database("mlflow")
        started = time.perf_counter()
        build_study(root / "served", args.trials, tracking_uri=backend)
        optuna.copy_study(from_study_name=STUDY, from_storage=open_storage(str(root / "served" / "optuna.journal")),
                          to_storage=open_storage(storage))
        print(f"built {args.trials} trials in PostgreSQL in {time.perf_counter() - started:.0f} s", flush=True)
        if args.embedded:
            started = time.perf_counter()
            build_study(root / "embedded", args.trials)
            print(f"built the same on the embedded store in {time.perf_counter() - started:.0f} s", flush=True)
        server = MlflowServer(backend, root / "artifacts").wait_ready()
        served = ["--storage", storage, "--store", str(root / "served")]
        rows = [
            ("kdsweep trials (PostgreSQL; runs from the server's database)",
             timed(cli("trials", STUDY, *served, "--tracking-uri", backend, cwd=root), args.repeats)),
            ("kdsweep trials -f csv (PostgreSQL; runs from the server's database)",
             timed(cli("trials", STUDY, "-f", "csv", *served, "--tracking-uri", backend, cwd=root), args.repeats)),
            ("kdsweep trials (PostgreSQL + MLflow server)",
             timed(cli("trials", STUDY, "--storage", storage, "--tracking-uri", server.url, "--store",
                       str(root / "served"), cwd=root), args.repeats)),
            ("kdsweep trials -f csv (PostgreSQL + MLflow server)",
             timed(cli("trials", STUDY, "-f", "csv", "--storage", storage, "--tracking-uri", server.url, "--store",
                       str(root / "served"), cwd=root), args.repeats)),
        ]
        if args.embedded:
            rows.append(("kdsweep trials (journal + SQLite)",
                         timed(cli("trials", STUDY, "--store", str(root / "embedded"), cwd=root), args.repeats)))
        if args.profile:
            _profile(STUDY, storage, backend, root / "served")
        print(f"\nmachine: {machine()}\n{args.trials} trials\n")
        print("| what | best s | median s | target |\n|---|---|---|---|")
        for name, times in rows:
            median = statistics.median(times)
            print(f"| {name} | {min(times):.2f} | {median:.2f} | < 2 s: {'met' if median < 2 else 'MISSED'} |")
    finally:
        if server is not None:
            server.stop()
        postgres.stop()
        shutil.rmtree(root, ignore_errors=True)
    return 0


def _profile(study: str, storage: str, backend: str, store: Path) -> None:
    """Where one warm in-process ``sweeps.trials`` spends its time (the CLI adds imports and printing)."""
    import cProfile
    import pstats

    from sweeps import trials

    trials(study, storage=storage, tracking_uri=backend, store=store)  # warm: imports, connections
    profile = cProfile.Profile()
    started = time.perf_counter()
    profile.runcall(trials, study, storage=storage, tracking_uri=backend, store=store)
    print(f"\nin-process sweeps.trials: {time.perf_counter() - started:.2f} s (profiled)")
    pstats.Stats(profile).sort_stats("cumulative").print_stats(18)


if __name__ == "__main__":
    sys.exit(main())
