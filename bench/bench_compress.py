"""Seed 002's question for `kdsweep compress`: what does fast mode cost against full mode? Both
modes on the same trial's student, paired by seed (the steps' batch order), side by side in one
process, on a copy of the store (the study's own MLflow runs are left alone).

    python bench/bench_compress.py --store mlruns --study mnist1d              # seeds 0 1 2, 8 bits
    python bench/bench_compress.py --store mlruns --study mnist1d --bits 4 --seeds 0 1 2 3 4

Prints one markdown row per seed and mode, then the mean test accuracy of each mode, the paired
difference full - fast with its 95 % interval, and the training-time ratio.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
from pathlib import Path

from sweeps.pipelines.compress import compress_trial
from sweeps.verdict.paired import paired_interval


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path, required=True, help="the store folder of the study")
    parser.add_argument("--study", required=True)
    parser.add_argument("--trial", type=int, help="default: the study's best")
    parser.add_argument("--prune", type=float, default=0.5)
    parser.add_argument("--bits", type=int, default=8, choices=(8, 4))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    copy = Path(tempfile.mkdtemp(prefix="kd-compress-")) / "store"
    shutil.copytree(args.store, copy)

    results: dict[str, list] = {"full": [], "fast": []}
    print("| seed | mode | prune test acc | QAT test acc | params | bytes | training s | peak MiB (+growth) |\n"
          "|---|---|---|---|---|---|---|---|")
    for seed in args.seeds:
        for mode in ("full", "fast"):
            done = compress_trial(args.study, trial=args.trial, prune=args.prune, bits=args.bits,
                                  fast=mode == "fast", seed=seed, store=copy)
            steps = done.steps[1:]
            results[mode].append(done)
            peak = max(steps, key=lambda s: s.peak_memory_mb)
            print(f"| {seed} | {mode} | {steps[0].test_acc:.4f} | {steps[-1].test_acc:.4f} | {steps[-1].params:,} | "
                  f"{steps[-1].size_bytes:,} | {sum(s.train_time_s for s in steps):.2f} | "
                  f"{peak.peak_memory_mb:.0f} (+{peak.memory_growth_mb:.0f}) |", flush=True)

    start = results["full"][0].steps[0]
    print(f"\ntrial {results['full'][0].trial}'s student: test acc {start.test_acc:.4f}, {start.params:,} params; "
          f"prune {args.prune:g}, {args.bits}-bit QAT, {len(args.seeds)} seeds")
    final = {mode: [done.steps[-1].test_acc for done in runs] for mode, runs in results.items()}
    train_s = {mode: [sum(s.train_time_s for s in done.steps[1:]) for done in runs] for mode, runs in results.items()}
    for mode in ("full", "fast"):
        print(f"{mode}: mean test acc {statistics.fmean(final[mode]):.4f}, mean training {statistics.fmean(train_s[mode]):.2f} s")
    if len(args.seeds) >= 2:
        gap = paired_interval(final["full"], final["fast"])
        print(f"full - fast: {gap.mean:+.4f}, 95 % CI [{gap.low:+.4f}, {gap.high:+.4f}] over {gap.n} paired seeds")
    print(f"training time, fast / full: {statistics.fmean(train_s['fast']) / statistics.fmean(train_s['full']):.2f}")


if __name__ == "__main__":
    main()
