"""Does distillation pay? The KD verdict of fixed configurations in several regimes, measured with
``kdsweep train --repeats K`` itself (K paired seeds, each pair a distilled run and its no-KD twin
under the same stopping rule and labels), so the figures in docs/verdict.md come from the code users run.

    python bench/bench_kd_gain.py                 # K = 5, every regime, a temporary store
    python bench/bench_kd_gain.py --repeats 3 --only mnist1d-few-labels-transfer --keep /tmp/kd-store

Prints one markdown row per regime: task, student, labels, transfer set, the means, the gain with its
95% paired-t interval, the verdict word and the wall time.
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

# Shared by every regime: the same recipe for both arms; only alpha and the transfer set differ.
_RECIPE = ["--temperature", "4", "--alpha", "0.9", "--lr", "0.01", "--batch-size", "32", "--epochs", "60",
           "--patience", "20", "--device", "cpu"]
REGIMES = {
    "mnist1d-tiny-student": ("mnist1d", ["--ratio", "0.06", "--data-fraction", "1", "--transfer-ratio", "0"]),
    "mnist1d-moderate-all-labels": ("mnist1d", ["--ratio", "0.25", "--data-fraction", "1", "--transfer-ratio", "0"]),
    "mnist1d-few-labels": ("mnist1d", ["--ratio", "0.25", "--data-fraction", "0.3", "--transfer-ratio", "0"]),
    "mnist1d-few-labels-transfer": ("mnist1d", ["--ratio", "0.25", "--data-fraction", "0.3", "--transfer-ratio", "4"]),
    "digits-tiny-student": ("digits", ["--ratio", "0.03", "--data-fraction", "1", "--transfer-ratio", "0"]),
    "digits-few-labels-transfer": ("digits", ["--ratio", "0.125", "--data-fraction", "0.2", "--transfer-ratio", "4"]),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--only", nargs="*", choices=sorted(REGIMES), help="regimes to run (default: all)")
    parser.add_argument("--keep", type=Path, help="store folder to keep (default: a temporary one)")
    args = parser.parse_args()
    store = args.keep or Path(tempfile.mkdtemp(prefix="kd-gain-")) / "store"
    kdsweep = shutil.which("kdsweep", path=str(Path(sys.executable).parent)) or "kdsweep"
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "KDSWEEP_STORE")}
    for task in {REGIMES[name][0] for name in args.only or REGIMES}:  # teachers first, outside the timings
        subprocess.run([kdsweep, "teacher", "--task", task, "--store", str(store)], check=True, env=env,
                       capture_output=True)

    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{store / 'mlflow.db'}")
    print("| regime | K | distilled | no-KD | gain [95% CI] | verdict | wall s |\n|---|---|---|---|---|---|---|")
    for name in args.only or REGIMES:
        task, flags = REGIMES[name]
        started = time.perf_counter()
        subprocess.run([kdsweep, "train", "--task", task, *_RECIPE, *flags, "--repeats", str(args.repeats),
                        "--experiment", name, "--store", str(store)], check=True, env=env, capture_output=True)
        wall = time.perf_counter() - started
        experiment = client.get_experiment_by_name(name).experiment_id
        parent = client.search_runs([experiment], "tags.`kdsweep.kind` = 'verdict'", order_by=["start_time DESC"],
                                    max_results=1)[0].data
        m = parent.metrics
        if parent.tags["kd_verdict"] == "incomplete":
            print(f"| {name} | {args.repeats} | - | - | - | incomplete: {parent.tags['kd_verdict_reason']} | {wall:.0f} |")
            continue
        print(f"| {name} | {int(m['kd_repeats'])} | {m['distilled_test_acc']:.3f} | {m['nokd_test_acc']:.3f} | "
              f"{m['kd_gain']:+.3f} [{m['kd_gain_ci95_low']:+.3f}, {m['kd_gain_ci95_high']:+.3f}] | "
              f"{parent.tags['kd_verdict']} | {wall:.0f} |", flush=True)
    if args.keep is None:
        shutil.rmtree(store.parent, ignore_errors=True)


if __name__ == "__main__":
    main()
