"""Does embedding distillation pay on mnist1d-retrieval? Test Recall@1 of the teacher, of raw students
(the proxy loss alone, alpha 0) and of distilled ones (the task's defaults: alpha 0.7, cosine +
relational), paired by seed, through kdcore's Python API; `kdsweep run --task mnist1d-retrieval` searches them.

    python bench/bench_embedding.py                                  # seeds 0 1 2, a temporary store
    python bench/bench_embedding.py --seeds 0 1 2 3 4 --set relational_weight=0 --set embed_loss=mse

Prints one markdown row per seed and the means; one thread, so timings compare across machines' cores.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from kdcore import TrainConfig, get_task, load_or_train_teacher, make_config, teacher_outputs, train


def _setting(text: str) -> tuple[str, object]:
    name, _, value = text.partition("=")
    if name not in TrainConfig.model_fields:
        raise argparse.ArgumentTypeError(f"unknown setting {name!r}")
    default = TrainConfig.model_fields[name].default
    return name, value if isinstance(default, str) else type(default)(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--set", type=_setting, action="append", default=[], metavar="NAME=VALUE",
                        help="a TrainConfig setting of both arms, over the task's defaults")
    parser.add_argument("--store", type=Path, help="where the teacher and its cache live (default: temporary)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    task = get_task("mnist1d-retrieval")
    store = args.store or Path(tempfile.mkdtemp(prefix="kd-embedding-"))
    teacher = load_or_train_teacher(task, store, device="cpu")
    cached = teacher_outputs(task, teacher.model, teacher.digest, store / "cache", device="cpu").logits
    settings = {**task.defaults(), "device": "cpu", **dict(args.set)}
    print(f"teacher test Recall@1 {teacher.test_acc:.4f} (trained in {teacher.train_time_s:.1f} s); "
          f"settings {settings}\n")
    print("| seed | raw R@1 | distilled R@1 | gain | raw s | distilled s |\n|---|---|---|---|---|---|")
    raws, kds = [], []
    for seed in args.seeds:
        started = time.perf_counter()
        raw = train(task, make_config(**{**settings, "alpha": 0.0, "seed": seed}))
        middle = time.perf_counter()
        kd = train(task, make_config(**{**settings, "seed": seed}), teacher=cached)
        done = time.perf_counter()
        raws.append(raw.test_acc)
        kds.append(kd.test_acc)
        print(f"| {seed} | {raw.test_acc:.4f} | {kd.test_acc:.4f} | {kd.test_acc - raw.test_acc:+.4f} | "
              f"{middle - started:.1f} | {done - middle:.1f} |", flush=True)
    print(f"| mean | {statistics.fmean(raws):.4f} | {statistics.fmean(kds):.4f} | "
          f"{statistics.fmean(kds) - statistics.fmean(raws):+.4f} | | |")


if __name__ == "__main__":
    main()
