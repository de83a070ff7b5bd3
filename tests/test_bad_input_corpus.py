"""The bad-input corpus (issue 8): every way a user got kdsweep's input wrong, on every command.

Each case is answered as a user needs it: exactly one ``error:`` line on stderr (naming the value,
what is allowed and how to fix it), no traceback, nothing on stdout, exit code 2 for bad input and 1
for a damaged store, and nothing written. "Nothing written" is checked by comparing the name, size
and modification time of every file and folder under the case's folder (the store, the working
directory, the files the case names) before and after; a case that starts from a store copies a
small store written by one real sweep (the session fixture ``swept``).

Cases run in-process through Typer's CliRunner, except where a real process matters (``process``):
a YAML alias bomb or a 50 MB file must not take the test process down if a check regressed, and a
real process takes Click's own exit path. No case trains or sweeps: each error is found before
anything runs (``run`` cases also carry ``--budget 30s --n-trials 1`` first and ``train`` cases
``--epochs 1``, so that a check that regressed costs seconds; a case's own later flag wins).
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from _sweep_store import copy_store, settle
from typer.testing import CliRunner

from cli.main import app

MAX_LINE = 1100  # cli._common caps a message at about 1000 characters
CORES_X4 = (os.cpu_count() or 1) * 4
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


@dataclass(frozen=True)
class Case:
    """One bad input. ``args`` and ``config`` may name {store}, {config}, {file} (a regular file),
    {dir} (an empty folder), {tmp} (the case's folder) and {study} (the swept store's study)."""

    args: tuple[str, ...]
    words: tuple[str, ...] = ()  # what the error line must contain
    code: int = 2
    store: str = "new"  # new: {store} does not exist; empty: an empty folder; swept: a copy of the swept store
    config: str | bytes | Callable[[], bytes] | None = None  # written to {config}
    setup: str | None = None  # a name in SETUPS: damage done to the case's folder or store first
    env: dict[str, str] = field(default_factory=dict)
    process: bool = False  # run `python -m cli.main` in a subprocess
    absent: tuple[str, ...] = ()  # paths outside the case's folder that must not exist afterwards
    skip: str = ""  # why the case cannot run here


def alias_bomb() -> str:
    """A 'billion laughs' YAML value: ten levels of nine aliases each (9**10 leaves if expanded)."""
    levels = ["&a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    levels += [f"&a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 10)]
    return f"[{', '.join(levels)}]"


def fifty_megabytes() -> bytes:
    return b"task: digits\nbudget: " + b"x" * (50 << 20) + b"\n"


ALIAS_BOMB = alias_bomb()
BINARY = bytes(range(256)) * 8  # 0x80-0xff: not UTF-8
RUN = ("run", "--budget", "30s", "--n-trials", "1", "--task", "digits", "--store", "{store}")
RUN_FILE = ("run", "--budget", "30s", "--n-trials", "1", "--config", "{config}", "--store", "{store}")
TRAIN = ("train", "--epochs", "1", "--task", "digits", "--store", "{store}")
TEACHER = ("teacher", "--task", "digits", "--store", "{store}")
SWEPT_RUN = (*RUN, "--study", "{study}")


def trials(*args: str) -> tuple[str, ...]:
    return ("trials", "{study}", *args, "--store", "{store}")


# The cases of compress and federate below that get past the numeric checks (cli._numbers) to the store.
_NEEDS_A_STORE = {"trial-unknown", "bits-a-word", "bits-zero", "threads-too-many", "tracking-uri-scheme",
                  "storage-missing", "clients-more-than-items", "partition-unknown", "partition-alpha-zero",
                  "partition-alpha-word", "partition-alpha-inf", "rounds-a-word"}

CASES: dict[str, Case] = {
    # ---- run: flags (a new store must not be created) --------------------------------------------
    "run-budget-in-words": Case((*RUN, "--budget", "2 hours"), ("invalid budget '2 hours'",)),
    "run-budget-negative": Case((*RUN, "--budget=-5m"), ("invalid budget '-5m'",)),
    "run-budget-zero": Case((*RUN, "--budget", "0s"), ("invalid budget '0s'", "longer than 0s")),
    "run-budget-empty": Case((*RUN, "--budget", ""), ("invalid budget ''",)),
    "run-sampler-unknown": Case((*RUN, "--sampler", "bogus"), ("unknown sampler 'bogus'",)),
    "run-pruner-unknown": Case((*RUN, "--pruner", "bogus"), ("unknown pruner 'bogus'",)),
    "run-objective-unknown": Case((*RUN, "--objective", "speed"), ("unknown objective 'speed'", "accuracy, pareto")),
    "run-cost-without-pareto": Case((*RUN, "--cost", "flops"), ("--cost flops needs --objective pareto",)),
    "run-cost-unknown": Case((*RUN, "--objective", "pareto", "--cost", "energy"), ("unknown cost 'energy'",)),
    "run-pareto-with-a-pruner": Case((*RUN, "--objective", "pareto", "--pruner", "median"),
                                     ("pruner 'median' cannot judge a two-objective trial", "--pruner none")),
    "run-pareto-with-cmaes": Case((*RUN, "--objective", "pareto", "--sampler", "cmaes"),
                                  ("sampler 'cmaes' cannot search two objectives",)),
    "run-fidelity-unknown": Case((*RUN, "--fidelity", "labels"), ("--fidelity labels", "epochs, data or data:F")),
    "run-fidelity-share-too-big": Case((*RUN, "--fidelity", "data:1.5"), ("--fidelity data:1.5", "(0, 1)")),
    "run-fidelity-without-pruner": Case((*RUN, "--fidelity", "data", "--pruner", "none"),
                                        ("--fidelity data:0.3 needs a pruner", "--pruner median")),
    "run-fidelity-under-pareto": Case((*RUN, "--fidelity", "data", "--objective", "pareto"),
                                      ("--fidelity data:0.3 needs a pruner", "--objective pareto")),
    "run-file-fidelity-and-its-settings": Case(RUN_FILE, ("sets low_fidelity_epochs and low_fidelity_fraction itself",),
                                               config="task: digits\nfidelity: data\ntrain:\n  low_fidelity_epochs: 2\n"),
    "run-max-size-in-words": Case((*RUN, "--max-size", "big"), ("invalid size 'big'", "50KB")),
    "run-max-params-negative": Case((*RUN, "--max-params=-5"), ("--max-params -5", ">= 1")),
    "run-min-retention-percent": Case((*RUN, "--min-retention", "98"), ("--min-retention 98", "0.98")),
    "run-file-objective-unknown": Case(RUN_FILE, ("unknown objective 'speed'",), config="task: digits\nobjective: speed\n"),
    "run-limit-that-no-student-meets": Case((*RUN, "--max-params", "10"),
                                            ("no student in the search space meets the limits", "max_params")),
    "run-file-max-size-in-words": Case(RUN_FILE, ("invalid size 'huge'",), config="task: digits\nmax_size: huge\n"),
    "run-task-unknown": Case((*RUN, "--task", "bogus"), ("unknown task 'bogus'",)),
    "run-task-not-a-factory": Case((*RUN, "--task", "os:system"), ("os:system",)),
    "run-task-not-callable": Case((*RUN, "--task", "os:sep"), ("os:sep", "not a callable")),
    "run-task-missing-module": Case((*RUN, "--task", "no_such_module_kd:make"), ("no_such_module_kd",)),
    "run-storage-scheme": Case((*RUN, "--storage", "foo://x"), ("'foo://x'",)),
    "run-storage-sqlite-one-slash": Case((*RUN, "--storage", "sqlite:/x"), ("'sqlite:/x'",)),
    "run-storage-sqlite-in-memory": Case((*RUN, "--storage", "sqlite://"), ("in memory",)),
    "run-storage-journal-missing-folder": Case((*RUN, "--storage", "/nonexistent/kdsweep/optuna.journal"),
                                               ("does not exist",), absent=("/nonexistent",)),
    "run-storage-unreachable": Case((*RUN, "--storage", "postgresql://u:p@127.0.0.1:1/db"),
                                    ("cannot open Optuna storage",)),
    "run-storage-folder": Case((*RUN, "--storage", "{dir}"), ("is a folder", "{dir}/optuna.journal")),
    "run-storage-journal-named-folder": Case((*RUN, "--storage", "{tmp}/d.journal"), ("is a folder",),
                                             setup="journal-folder"),
    "run-storage-sqlite-folder": Case((*RUN, "--storage", "sqlite:///{dir}"), ("is a folder",)),
    "run-storage-not-a-journal": Case((*RUN, "--storage", "{tmp}/x.txt"), ("neither a URL nor a journal",)),
    "run-tracking-uri-unknown-scheme": Case((*RUN, "--tracking-uri", "bogus://x"),
                                            ("unsupported tracking URI 'bogus://x'", "sqlite:///")),
    "run-tracking-uri-missing-folder": Case((*RUN, "--tracking-uri", "sqlite:////nonexistent/dir/m.db"),
                                            ("/nonexistent/dir does not exist",), absent=("/nonexistent",)),
    "run-tracking-uri-folder": Case((*RUN, "--tracking-uri", "sqlite:///{dir}"), ("names a folder",)),
    "run-tracking-uri-in-memory": Case((*RUN, "--tracking-uri", "sqlite://"), ("in-memory",)),
    "run-tracking-uri-unreachable": Case((*RUN, "--tracking-uri", "http://127.0.0.1:1"),
                                         ("127.0.0.1:1", "does not answer")),
    "run-jobs-zero": Case((*RUN, "--jobs", "0"), ("--jobs 0", f"1 to {CORES_X4}")),
    "run-jobs-1000": Case((*RUN, "--jobs", "1000"), ("--jobs 1000", f"1 to {CORES_X4}")),
    "run-jobs-above-cores-x4": Case((*RUN, "--jobs", str(CORES_X4 + 1)), (f"--jobs {CORES_X4 + 1}",)),
    "run-jobs-negative": Case((*RUN, "--jobs=-3"), ("--jobs -3",)),
    "run-n-trials-zero": Case((*RUN, "--n-trials", "0"), ("--n-trials 0",)),
    "run-n-trials-negative": Case((*RUN, "--n-trials=-2"), ("--n-trials -2",)),
    "run-seed-negative": Case((*RUN, "--seed=-1"), ("--seed -1", "use 0 to")),
    "run-seed-too-large": Case((*RUN, "--seed", str(2**32)), (f"--seed {2**32}",)),
    "run-study-escapes": Case((*RUN, "--study", "../../../escape"), ("'../../../escape'", "letters, digits")),
    "run-study-absolute": Case((*RUN, "--study", "/tmp/kdsweep-escape"), ("'/tmp/kdsweep-escape'",),
                               absent=("/tmp/kdsweep-escape",)),
    "run-study-hidden": Case((*RUN, "--study", ".hidden"), ("'.hidden'", "not starting with '.'")),
    "run-study-dot-dot": Case((*RUN, "--study", ".."), ("'..'",)),
    "run-study-slash": Case((*RUN, "--study", "a/b"), ("'a/b'",)),
    "run-study-empty": Case((*RUN, "--study", ""), ("study name ''",)),
    "run-study-space": Case((*RUN, "--study", "my study"), ("'my study'",)),
    "run-study-too-long": Case((*RUN, "--study", "x" * 101), ("1 to 100",)),
    "run-repeats-one": Case((*RUN, "--repeats", "1"), ("--repeats 1", "at least 2")),
    "run-repeats-negative": Case((*RUN, "--repeats=-1"), ("--repeats -1",)),
    "run-min-epochs-above-epochs": Case((*RUN, "--min-epochs", "500"), ("min_epochs=500",)),
    "run-min-epochs-zero": Case((*RUN, "--min-epochs", "0"), ("--min-epochs 0", ">= 1")),
    "run-presets-on-a-grid": Case((*RUN, "--enqueue-presets", "--sampler", "grid"), ("--enqueue-presets",)),
    "run-store-is-a-file": Case((*RUN, "--store", "{file}"), ("{file} is not a folder",)),
    "run-store-under-a-file": Case((*RUN, "--store", "{file}/sub"), ("{file} is not a folder",)),
    "run-store-under-proc": Case((*RUN, "--store", "/proc/kdsweep-store"), ("/proc/kdsweep-store",),
                                 absent=("/proc/kdsweep-store",)),
    "run-store-unwritable": Case((*RUN, "--store", "{tmp}/ro/store"), ("no permission",), setup="read-only-folder",
                                 skip="root writes anywhere" if IS_ROOT else ""),
    "run-store-env-is-a-file": Case(("run", "--budget", "30s", "--task", "digits"), ("KDSWEEP_STORE", "{file}"),
                                    env={"KDSWEEP_STORE": "{file}"}),
    "run-tracking-env-unknown-scheme": Case(RUN, ("MLFLOW_TRACKING_URI", "'bogus://x'"),
                                            env={"MLFLOW_TRACKING_URI": "bogus://x"}),
    "run-empty-store-stays-empty-jobs": Case((*RUN, "--jobs", "0"), ("--jobs 0",), store="empty"),
    "run-empty-store-stays-empty-budget": Case((*RUN, "--budget", "2 hours"), ("invalid budget",), store="empty"),
    "run-empty-store-stays-empty-storage": Case((*RUN, "--storage", "foo://x"), ("'foo://x'",), store="empty"),
    "run-empty-store-stays-empty-study": Case((*RUN, "--study", "../x"), ("'../x'",), store="empty"),
    # ---- run: Click's usage errors -------------------------------------------------------------------
    "run-jobs-not-a-number": Case((*RUN, "--jobs", "two"), ("'--jobs'", "'two'", "--help")),
    "run-n-trials-not-a-number": Case((*RUN, "--n-trials", "many"), ("'--n-trials'", "'many'")),
    "run-seed-not-a-number": Case((*RUN, "--seed", "abc"), ("'--seed'", "'abc'")),
    "run-budget-without-value": Case((*RUN, "--budget"), ("'--budget' requires an argument",)),
    "run-unknown-option": Case((*RUN, "--bogus-flag"), ("No such option: --bogus-flag",)),
    "run-jobs-not-a-number-in-a-process": Case((*RUN, "--jobs", "two"), ("'two'",), process=True),
    # ---- run: sweep files ----------------------------------------------------------------------------
    "file-missing": Case(("run", "--config", "{tmp}/nope.yaml", "--store", "{store}"), ("cannot read config file",)),
    "file-is-a-folder": Case(("run", "--config", "{dir}", "--store", "{store}"), ("cannot read config file",)),
    "file-binary": Case(RUN_FILE, ("not UTF-8", "byte 0x80"), config=BINARY),
    "file-control-characters": Case(RUN_FILE, ("not valid YAML",), config="task: digits\x00\n"),
    "file-unknown-key": Case(RUN_FILE, ("unknown setting 'budgte'",), config="task: digits\nbudgte: 1m\n"),
    "file-malformed": Case(RUN_FILE, ("not valid YAML", "line"), config="task: digits\nspace: {alpha: [0, 1\n"),
    "file-not-a-mapping": Case(RUN_FILE, ("must hold a mapping",), config="- 1\n- 2\n"),
    "file-a-number": Case(RUN_FILE, ("must hold a mapping", "not int"), config="42\n"),
    "file-min-epochs-above-epochs": Case(RUN_FILE, ("min_epochs=6",),
                                         config="task: digits\nmin_epochs: 6\ntrain: {epochs: 5}\n"),
    "file-inverted-range": Case(RUN_FILE, ("inverted",),
                                config="task: digits\nspace: {temperature: {low: 20, high: 1}}\n"),
    "file-unknown-train-setting": Case(RUN_FILE, ("unknown setting 'epoch'",),
                                       config="task: digits\nspace: {alpha: {low: 0, high: 1}}\ntrain: {epoch: 5}\n"),
    "file-zero-step": Case(RUN_FILE, ("step",),
                           config="task: digits\nspace: {lr: {low: 0.001, high: 0.01, step: 0}}\n"),
    "file-schedule-without-its-end": Case(RUN_FILE, ("temperature_schedule='cosine' needs temperature_end",),
                                          config="task: digits\nspace: {temperature_schedule: [constant, cosine]}\n"),
    "file-stages-not-summing-to-1": Case(RUN_FILE, ("alpha_stages=[[0.5, 0.7], [0.2, 0.3]] is invalid", "sum to 0.7"),
                                         config="task: digits\ntrain: {alpha_schedule: stages, "
                                                "alpha_stages: [[0.5, 0.7], [0.2, 0.3]]}\n"),
    "file-more-teachers-than-the-task": Case(RUN_FILE, ("teachers=3 is out of range for task 'digits'",),
                                             config="task: digits\nspace: {teachers: [1, 3]}\n"),
    "file-teacher-weights-not-one-per-teacher": Case(RUN_FILE, ("teacher_weights=[0.5] is invalid",),
                                                     config="task: digits\ntrain: {teachers: 2, "
                                                            "teacher_weights: [0.5]}\n"),
    "file-ema-decay-1": Case(RUN_FILE, ("ema_decay=1 is out of range",),
                             config="task: digits\nspace: {ema_decay: [0.99, 1]}\n"),
    "teacher-more-teachers-than-the-task": Case((*TEACHER, "--teachers", "3"),
                                                ("teachers=3 is out of range for task 'digits'",)),
    "file-fifty-megabytes": Case(RUN_FILE, ("over 1 MB",), config=fifty_megabytes, process=True),
    "file-alias-bomb-in-budget": Case(RUN_FILE, ("alias *a0", "not allowed"),
                                      config=f"task: digits\nbudget: {ALIAS_BOMB}\n", process=True),
    "file-alias-bomb-in-train-lr": Case(RUN_FILE, ("alias *a0",),
                                        config=f"task: digits\ntrain:\n  lr: {ALIAS_BOMB}\n", process=True),
    "file-alias-bomb-in-space-ratio": Case(RUN_FILE, ("alias *a0",), process=True,
                                           config=f"task: digits\nspace:\n  ratio: {ALIAS_BOMB}\n"),
    "file-alias": Case(RUN_FILE, ("alias *t", "line 2"), config="task: &t digits\nstudy: *t\n"),
    "file-merge-key": Case(RUN_FILE, ("alias *d",), config="task: digits\nx: &d {epochs: 3}\ntrain: {<<: *d}\n"),
    "file-nested-too-deeply": Case(RUN_FILE, ("nests too deeply",), config="task: digits\nspace: " + "[" * 20000),
    "file-huge-integer": Case(RUN_FILE, ("cannot be read", "4300 digits"), config="task: digits\nseed: " + "9" * 5000),
    "file-long-budget-is-cut-short": Case(("run", "--n-trials", "1", "--config", "{config}", "--store", "{store}"),
                                          ("invalid budget", "chars]"),
                                          config="task: digits\nbudget: " + "x" * 500_000 + "\n"),
    "file-budget-a-list": Case(RUN_FILE, ("budget=[1, 2]",), config="task: digits\nbudget: [1, 2]\n"),
    "file-jobs-1000": Case(RUN_FILE, ("--jobs 1000",), config="task: digits\njobs: 1000\n"),
    "file-jobs-a-string": Case(RUN_FILE, ("jobs='many'",), config="task: digits\njobs: many\n"),
    "file-seed-negative": Case(RUN_FILE, ("--seed -1",), config="task: digits\nseed: -1\n"),
    "file-study-escapes": Case(RUN_FILE, ("'../../x'",), config="task: digits\nstudy: ../../x\n"),
    "file-task-not-a-factory": Case(RUN_FILE, ("os:system",), config="task: os:system\n"),
    "file-storage-folder": Case(RUN_FILE, ("is a folder",), config="task: digits\nstorage: {dir}\n"),
    "file-device-bogus": Case(RUN_FILE, ("device='bogus'",), config="task: digits\ntrain: {device: bogus}\n"),
    "file-temperature-inf": Case(RUN_FILE, ("temperature=inf", "finite"),
                                 config="task: digits\nspace: {temperature: .inf}\n"),
    "file-lr-inf": Case(RUN_FILE, ("lr=inf", "finite"), config="task: digits\ntrain: {lr: .inf}\n"),
    "file-space-not-a-mapping": Case(RUN_FILE, ("space",), config="task: digits\nspace: [1, 2]\n"),
    "file-repeats-one": Case(RUN_FILE, ("--repeats 1",), config="task: digits\nrepeats: 1\n"),
    # ---- embedding tasks (seed 003's Recall@1 students) -------------------------------------------------
    "file-embedding-setting-on-classification": Case(
        RUN_FILE, ("relational_weight=0.5", "embedding tasks only"), config="task: digits\ntrain: {relational_weight: 0.5}\n"),
    "file-embedding-two-teachers": Case(
        RUN_FILE, ("teachers=2", "not supported for embedding task"),
        config="task: mnist1d-retrieval\ntrain: {teachers: 2}\n"),
    "file-embedding-loss-unknown": Case(
        RUN_FILE, ("embed_loss", "l1"), config="task: mnist1d-retrieval\nspace: {embed_loss: [cosine, l1]}\n"),
    "file-embedding-both-weights-zero": Case(
        RUN_FILE, ("embed_weight", "relational_weight"),
        config="task: mnist1d-retrieval\ntrain: {embed_weight: 0, relational_weight: 0}\n"),
    # ---- run: an existing store ------------------------------------------------------------------------
    "run-resume-with-another-objective": Case(
        (*RUN, "--study", "{study}", "--objective", "pareto"), ("was run with objective 'accuracy'",), store="swept"),
    "run-resume-with-another-space": Case(
        (*RUN_FILE, "--study", "{study}"),
        ("another search space",), store="swept", config="task: digits\nspace: {alpha: {low: 0, high: 1}}\n"),
    "run-mlflow-db-random-bytes": Case(SWEPT_RUN, ("mlflow.db is damaged", "file is not a database"), code=1,
                                       store="swept", setup="random-db"),
    "run-mlflow-db-truncated": Case(SWEPT_RUN, ("mlflow.db is damaged", "malformed"), code=1, store="swept",
                                    setup="truncated-db"),
    "run-mlflow-db-empty": Case(SWEPT_RUN, ("mlflow.db is empty (0 bytes)", "trial(s) of the study"), code=1,
                                store="swept", setup="empty-db"),
    "run-mlflow-db-missing": Case(SWEPT_RUN, ("mlflow.db does not exist", "trial(s) of the study"), code=1,
                                  store="swept", setup="missing-db"),
    "run-mlflow-db-empty-other-study": Case((*RUN, "--study", "fresh"), ("mlflow.db is empty (0 bytes)",), code=1,
                                            store="swept", setup="empty-db"),
    "run-journal-garbage-line": Case(SWEPT_RUN, ("optuna.journal is damaged",), code=1, store="swept",
                                     setup="garbage-journal"),
    "run-mlflow-db-random-bytes-in-a-process": Case(SWEPT_RUN, ("mlflow.db is damaged",), code=1, store="swept",
                                                    setup="random-db", process=True),
    "run-existing-store-unwritable": Case(SWEPT_RUN, ("no permission",), store="swept", setup="read-only-store",
                                          skip="root writes anywhere" if IS_ROOT else ""),
    # ---- train -----------------------------------------------------------------------------------------
    "train-temperature-zero": Case((*TRAIN, "--temperature", "0"), ("--temperature 0.0",)),
    "train-temperature-negative": Case((*TRAIN, "--temperature", "-1"), ("--temperature -1.0",)),
    "train-alpha-negative": Case((*TRAIN, "--alpha", "-0.1"), ("--alpha -0.1", "0 to 1")),
    "train-alpha-above-one": Case((*TRAIN, "--alpha", "1.5"), ("--alpha 1.5",)),
    "train-ratio-zero": Case((*TRAIN, "--ratio", "0"), ("--ratio 0.0", "(0, 1]")),
    "train-ratio-above-one": Case((*TRAIN, "--ratio", "1.5"), ("--ratio 1.5",)),
    "train-lr-zero": Case((*TRAIN, "--lr", "0"), ("--lr 0.0",)),
    "train-lr-negative": Case((*TRAIN, "--lr", "-0.001"), ("--lr -0.001",)),
    "train-data-fraction-zero": Case((*TRAIN, "--data-fraction", "0"), ("--data-fraction 0.0",)),
    "train-data-fraction-above-one": Case((*TRAIN, "--data-fraction", "1.5"), ("--data-fraction 1.5",)),
    "train-unknown-task": Case((*TRAIN, "--task", "no_such_task"), ("no_such_task",)),
    "train-malformed-yaml": Case((*TRAIN, "--config", "{config}"), ("config.yaml", "not valid YAML"),
                                 config="temperature: [1, 2\nalpha: 0.5\n"),
    "train-unknown-yaml-key": Case((*TRAIN, "--config", "{config}"), ("bogus_key",), config="bogus_key: 1\n"),
    "train-temperature-inf": Case((*TRAIN, "--temperature", "inf"), ("--temperature inf", "finite", "0.05 to 100")),
    "train-temperature-underflow": Case((*TRAIN, "--temperature", "1e-30"), ("--temperature 1e-30", "0.05 to 100")),
    "train-lr-inf": Case((*TRAIN, "--lr", "inf"), ("--lr inf", "finite", "(0, 10]")),
    "train-lr-nan": Case((*TRAIN, "--lr", "nan"), ("--lr nan", "finite")),
    "train-device-bogus": Case((*TRAIN, "--device", "bogus"), ("device='bogus'", "'cpu'")),
    "train-device-without-cuda": Case((*TRAIN, "--device", "cuda"), ("device='cuda'", "not available"),
                                      skip="CUDA is available" if torch.cuda.is_available() else ""),
    "train-task-not-a-factory": Case((*TRAIN, "--task", "os:system"), ("os:system", "takes no arguments")),
    "train-task-not-callable": Case((*TRAIN, "--task", "os:sep"), ("os:sep", "not a callable")),
    "train-transfer-without-pool": Case((*TRAIN, "--transfer-ratio", "2", "--data-fraction", "1"),
                                        ("transfer_ratio=2", "unlabelled")),
    "train-transfer-negative": Case((*TRAIN, "--transfer-ratio", "-1"), ("--transfer-ratio -1.0", "0 to 16")),
    "train-repeats-one": Case((*TRAIN, "--repeats", "1"), ("--repeats 1", "at least 2")),
    "train-repeats-without-kd": Case((*TRAIN, "--repeats", "3", "--alpha", "0"), ("alpha=0", "no KD")),
    "train-task-looks-like-markup": Case((*TRAIN, "--task", "[/x]"), ("[/x]",)),
    "train-seed-negative": Case((*TRAIN, "--seed=-1"), ("--seed -1", "0 to 4294967295")),
    "train-data-seed-negative": Case((*TRAIN, "--data-seed=-1"), ("--data-seed -1",)),
    "train-config-binary": Case((*TRAIN, "--config", "{config}"), ("not UTF-8",), config=BINARY),
    "train-config-alias-bomb": Case((*TRAIN, "--config", "{config}"), ("alias *a0",), config=f"lr: {ALIAS_BOMB}\n"),
    "train-config-fifty-megabytes": Case((*TRAIN, "--config", "{config}"), ("over 1 MB",), config=fifty_megabytes),
    "train-config-not-a-mapping": Case((*TRAIN, "--config", "{config}"), ("must hold a mapping",), config="[1]\n"),
    "train-store-is-a-file": Case((*TRAIN, "--store", "{file}"), ("{file} is not a folder",)),
    "train-store-under-a-file": Case((*TRAIN, "--store", "{file}/sub"), ("{file} is not a folder",)),
    "train-store-under-proc": Case((*TRAIN, "--store", "/proc/kdsweep-store"), ("/proc/kdsweep-store",),
                                   absent=("/proc/kdsweep-store",)),
    "train-store-unwritable": Case((*TRAIN, "--store", "{tmp}/ro/store"), ("no permission",), setup="read-only-folder",
                                   skip="root writes anywhere" if IS_ROOT else ""),
    "train-tracking-uri-unknown-scheme": Case((*TRAIN, "--tracking-uri", "bogus://x"), ("'bogus://x'",)),
    "train-tracking-uri-missing-folder": Case((*TRAIN, "--tracking-uri", "sqlite:////nonexistent/dir/m.db"),
                                              ("does not exist",), absent=("/nonexistent",)),
    "train-epochs-not-a-number": Case((*TRAIN, "--epochs", "two"), ("'--epochs'", "'two'")),
    "train-temperature-not-a-number": Case((*TRAIN, "--temperature", "hot"), ("'--temperature'", "'hot'")),
    "train-mlflow-db-random-bytes": Case(TRAIN, ("mlflow.db is damaged",), code=1, store="swept", setup="random-db"),
    "train-mlflow-db-empty": Case(TRAIN, ("mlflow.db is empty",), code=1, store="swept", setup="empty-db"),
    # ---- teacher ---------------------------------------------------------------------------------------
    "teacher-unknown-task": Case((*TEACHER, "--task", "bogus"), ("unknown task 'bogus'",)),
    "teacher-task-not-a-factory": Case((*TEACHER, "--task", "os:system"), ("os:system",)),
    "teacher-device-bogus": Case((*TEACHER, "--device", "bogus"), ("device='bogus'",)),
    "teacher-device-without-cuda": Case((*TEACHER, "--device", "cuda"), ("not available",),
                                        skip="CUDA is available" if torch.cuda.is_available() else ""),
    "teacher-store-is-a-file": Case((*TEACHER, "--store", "{file}"), ("{file} is not a folder",)),
    "teacher-store-under-a-file": Case((*TEACHER, "--store", "{file}/sub"), ("{file} is not a folder",)),
    "teacher-store-under-proc": Case((*TEACHER, "--store", "/proc/kdsweep-store"), ("/proc/kdsweep-store",),
                                     absent=("/proc/kdsweep-store",)),
    # ---- trials ----------------------------------------------------------------------------------------
    "trials-where-incomplete": Case(trials("--where", "retention >"), ("malformed where expression",), store="swept"),
    "trials-where-unknown-column": Case(trials("--where", "speed > 1"), ("unknown column 'speed'",), store="swept"),
    "trials-where-code": Case(trials("--where", "__import__('os').system('echo hacked')"), ("not a condition",),
                              store="swept"),
    "trials-where-at-sign": Case(trials("--where", "test_acc > @x"), ("malformed where expression",), store="swept"),
    "trials-sort-unknown": Case(trials("--sort", "-speed"), ("unknown sort key 'speed'",), store="swept"),
    "trials-columns-unknown": Case(trials("--columns", "number,speed"), ("unknown column 'speed'",), store="swept"),
    "trials-unknown-study": Case(("trials", "nope", "--store", "{store}"), ("unknown study 'nope'", "s1"),
                                 store="swept"),
    "trials-limit-zero": Case(trials("--limit", "0"), ("'--limit'", "'0'"), store="swept"),
    "trials-limit-negative": Case(trials("--limit=-1"), ("'--limit'", "'-1'"), store="swept"),
    "trials-limit-not-a-number": Case(trials("--limit", "x"), ("'--limit'", "'x'"), store="swept"),
    "trials-format-xml": Case(trials("--format", "xml"), ("'xml' is not one of",), store="swept"),
    "trials-storage-folder": Case(trials("--storage", "{dir}"), ("is a folder",), store="swept"),
    "trials-storage-missing": Case(trials("--storage", "{tmp}/none.journal"), ("no Optuna storage",), store="swept"),
    "trials-storage-scheme": Case(trials("--storage", "foo://x"), ("'foo://x'",), store="swept"),
    "trials-tracking-uri-unknown-scheme": Case(trials("--tracking-uri", "bogus://x"), ("'bogus://x'",), store="swept"),
    "trials-store-is-a-file": Case(("trials", "s1", "--store", "{file}"), ("is not a folder",)),
    "trials-no-store": Case(("trials", "s1", "--store", "{store}"), ("no Optuna storage",)),
    "trials-missing-study-argument": Case(("trials", "--store", "{store}"), ("Missing argument",)),
    "trials-mlflow-db-random-bytes": Case(trials(), ("mlflow.db is damaged", "file is not a database"), code=1,
                                          store="swept", setup="random-db"),
    "trials-mlflow-db-truncated": Case(trials(), ("mlflow.db is damaged", "malformed"), code=1, store="swept",
                                       setup="truncated-db"),
    "trials-mlflow-db-empty": Case(trials(), ("mlflow.db is empty (0 bytes)", "trial(s)"), code=1, store="swept",
                                   setup="empty-db"),
    "trials-mlflow-db-missing": Case(trials(), ("mlflow.db does not exist", "trial(s)"), code=1, store="swept",
                                     setup="missing-db"),
    "trials-mlflow-db-a-folder": Case(trials(), ("mlflow.db is damaged", "a folder"), code=1, store="swept",
                                      setup="db-folder"),
    "trials-journal-garbage-line": Case(trials(), ("optuna.journal is damaged",), code=1, store="swept",
                                        setup="garbage-journal"),
    "trials-mlflow-db-random-bytes-in-a-process": Case(trials(), ("mlflow.db is damaged",), code=1, store="swept",
                                                       setup="random-db", process=True),
    "trials-limit-zero-in-a-process": Case(trials("--limit", "0"), ("'--limit'",), store="swept", process=True),
    # ---- best ------------------------------------------------------------------------------------------
    "best-unknown-study": Case(("best", "nope", "--store", "{store}"), ("unknown study 'nope'",), store="swept"),
    "best-cheapest-and-a-metric": Case(("best", "{study}", "--cheapest", "--metric", "test_acc", "--store", "{store}"),
                                       ("--cheapest", "give one of them"), store="swept"),
    "export-format-unknown": Case(("export", "{study}", "--format", "onnx", "--out", "{tmp}/s.onnx", "--store", "{store}"),
                                  ("unknown export format 'onnx'", "pt2"), store="swept"),
    "export-int8-torchscript": Case(("export", "{study}", "--int8", "--format", "torchscript", "--out", "{tmp}/s.pt",
                                     "--store", "{store}"), ("cannot be scripted", "--format pt2"), store="swept"),
    "export-out-a-folder": Case(("export", "{study}", "--out", "{dir}", "--store", "{store}"), ("is a folder",),
                                store="swept"),
    "export-out-in-a-missing-folder": Case(("export", "{study}", "--out", "{tmp}/no/such/s.pt2", "--store", "{store}"),
                                           ("does not exist",), store="swept"),
    "export-unknown-trial": Case(("export", "{study}", "--trial", "999", "--out", "{tmp}/s.pt2", "--store", "{store}"),
                                 ("has no trial 999",), store="swept"),
    "export-run-unknown": Case(("export", "{study}", "--run", "0123456789abcdef", "--out", "{tmp}/s.pt2", "--store",
                                "{store}"), ("--run 0123456789abcdef: no such run",), store="swept"),
    "export-run-and-trial": Case(("export", "{study}", "--run", "abc", "--trial", "1", "--out", "{tmp}/s.pt2",
                                  "--store", "{store}"), ("leave out --trial and --int8",), store="swept"),
    # ---- compress --------------------------------------------------------------------------------------
    "compress-prune-one": Case(("compress", "{study}", "--prune", "1", "--store", "{store}"),
                               ("--prune 1.0 is not allowed", "[0, 1)"), store="swept"),
    "compress-prune-negative": Case(("compress", "{study}", "--prune", "-0.5", "--store", "{store}"),
                                    ("--prune -0.5 is not allowed",), store="swept"),
    "compress-prune-a-word": Case(("compress", "{study}", "--prune", "half", "--store", "{store}"),
                                  ("'half'", "a valid number"), store="swept"),
    "compress-bits-16": Case(("compress", "{study}", "--bits", "16", "--store", "{store}"),
                             ("--bits 16 is not allowed (choose 8 or 4)",), store="swept"),
    "compress-epochs-zero": Case(("compress", "{study}", "--epochs", "0", "--store", "{store}"),
                                 ("--epochs 0 is not allowed",), store="swept"),
    "compress-unknown-study": Case(("compress", "nope", "--store", "{store}"), ("unknown study 'nope'",),
                                   store="swept"),
    "compress-no-store": Case(("compress", "x", "--store", "{store}"), ("no",)),
    "best-metric-not-a-number": Case(("best", "{study}", "--metric", "state", "--store", "{store}"),
                                     ("metric 'state' is not a number",), store="swept"),
    "best-metric-a-flag": Case(("best", "{study}", "--metric", "pareto", "--store", "{store}"),
                               ("metric 'pareto' is not a number",), store="swept"),
    "best-metric-unknown": Case(("best", "{study}", "--metric", "speed", "--store", "{store}"), ("'speed'",),
                                store="swept"),
    "best-where-malformed": Case(("best", "{study}", "--where", "retention >", "--store", "{store}"),
                                 ("malformed where expression",), store="swept"),
    "best-where-matches-nothing": Case(("best", "{study}", "--where", "retention > 2", "--store", "{store}"),
                                       ("no COMPLETE trial",), store="swept"),
    "best-format-xml": Case(("best", "{study}", "-f", "xml", "--store", "{store}"), ("'xml'",), store="swept"),
    "best-mlflow-db-random-bytes": Case(("best", "{study}", "--store", "{store}"), ("mlflow.db is damaged",), code=1,
                                        store="swept", setup="random-db"),
    # ---- pareto ----------------------------------------------------------------------------------------
    "pareto-maximize-state": Case(("pareto", "{study}", "--maximize", "state", "--store", "{store}"),
                                  ("objective 'state' is not a number", "best_val_acc"), store="swept"),
    "pareto-minimize-run-id": Case(("pareto", "{study}", "--minimize", "mlflow_run_id", "--store", "{store}"),
                                   ("objective 'mlflow_run_id' is not a number",), store="swept"),
    "pareto-maximize-stop-reason": Case(("pareto", "{study}", "--maximize", "stop_reason", "--store", "{store}"),
                                        ("'stop_reason'",), store="swept"),
    "pareto-maximize-unknown": Case(("pareto", "{study}", "--maximize", "speed", "--store", "{store}"),
                                    ("'speed'",), store="swept"),
    "pareto-no-objective": Case(("pareto", "{study}", "--maximize", "", "--minimize", "", "--store", "{store}"),
                                ("at least one objective",), store="swept"),
    "pareto-unknown-study": Case(("pareto", "nope", "--store", "{store}"), ("unknown study 'nope'",), store="swept"),
    "pareto-where-malformed": Case(("pareto", "{study}", "--where", "and", "--store", "{store}"), ("where",),
                                   store="swept"),
    "pareto-columns-unknown": Case(("pareto", "{study}", "--columns", "speed", "--store", "{store}"),
                                   ("unknown column 'speed'",), store="swept"),
    # ---- compare ---------------------------------------------------------------------------------------
    "compare-a-study-with-itself": Case(("compare", "{study}", "{study}", "--store", "{store}"),
                                        ("two different studies",), store="swept"),
    "compare-unknown-study": Case(("compare", "{study}", "nope", "--store", "{store}"), ("unknown study 'nope'",),
                                  store="swept"),
    "compare-format-xml": Case(("compare", "{study}", "x", "-f", "xml", "--store", "{store}"), ("'xml'",),
                               store="swept"),
    "compare-one-study": Case(("compare", "{study}", "--store", "{store}"), ("Missing argument",), store="swept"),
    # ---- report ----------------------------------------------------------------------------------------
    "report-out-under-dev-null": Case(("report", "{study}", "--out", "/dev/null/x", "--store", "{store}"),
                                      ("--out /dev/null/x", "/dev/null is not a folder"), store="swept"),
    "report-out-is-a-file": Case(("report", "{study}", "--out", "{file}", "--store", "{store}"),
                                 ("{file} is not a folder",), store="swept"),
    "report-out-under-a-file": Case(("report", "{study}", "--out", "{file}/sub", "--store", "{store}"),
                                    ("{file} is not a folder",), store="swept"),
    "report-out-under-proc": Case(("report", "{study}", "--out", "/proc/kdsweep-report", "--store", "{store}"),
                                  ("/proc/kdsweep-report",), store="swept", absent=("/proc/kdsweep-report",)),
    "report-unknown-study": Case(("report", "nope", "--store", "{store}"), ("unknown study 'nope'",), store="swept"),
    "report-mlflow-db-random-bytes": Case(("report", "{study}", "--store", "{store}"), ("mlflow.db is damaged",),
                                          code=1, store="swept", setup="random-db"),
    "report-mlflow-db-missing": Case(("report", "{study}", "--store", "{store}"), ("mlflow.db does not exist",),
                                     code=1, store="swept", setup="missing-db"),
    # ---- studies ---------------------------------------------------------------------------------------
    "studies-storage-folder": Case(("studies", "--storage", "{dir}", "--store", "{store}"), ("is a folder",),
                                   store="swept"),
    "studies-storage-scheme": Case(("studies", "--storage", "foo://x", "--store", "{store}"), ("'foo://x'",),
                                   store="swept"),
    "studies-format-xml": Case(("studies", "-f", "xml", "--store", "{store}"), ("'xml'",), store="swept"),
    "studies-no-store": Case(("studies", "--store", "{store}"), ("no Optuna storage",)),
    "studies-tracking-uri-unknown-scheme": Case(("studies", "--tracking-uri", "bogus://x", "--store", "{store}"),
                                                ("'bogus://x'",), store="swept"),
    "studies-journal-garbage-line": Case(("studies", "--store", "{store}"), ("optuna.journal is damaged",), code=1,
                                         store="swept", setup="garbage-journal"),
    # ---- ui --------------------------------------------------------------------------------------------
    "ui-port-zero": Case(("ui", "--port", "0", "--store", "{store}"), ("'--port'", "'0'"), store="swept"),
    "ui-port-too-high": Case(("ui", "--port", "70000", "--store", "{store}"), ("'--port'", "'70000'"), store="swept"),
    "ui-port-not-a-number": Case(("ui", "--port", "http", "--store", "{store}"), ("'http'",), store="swept"),
    "ui-port-in-use": Case(("ui", "--port", "{port}", "--store", "{store}"), ("pick another with --port",),
                           store="swept", setup="port-in-use"),
    "ui-no-store": Case(("ui", "--store", "{store}"), ("no MLflow store",)),
    "ui-store-is-a-file": Case(("ui", "--store", "{file}"), ("is not a folder",)),
    "ui-tracking-server": Case(("ui", "--tracking-uri", "http://127.0.0.1:1", "--store", "{store}"),
                               ("is a server already",), store="swept"),
    "ui-mlflow-db-random-bytes": Case(("ui", "--store", "{store}"), ("mlflow.db is damaged",), code=1, store="swept",
                                      setup="random-db"),
    "ui-mlflow-db-empty": Case(("ui", "--store", "{store}"), ("mlflow.db is empty",), code=1, store="swept",
                               setup="empty-db"),
    "ui-port-zero-in-a-process": Case(("ui", "--port", "0", "--store", "{store}"), ("'--port'",), process=True),
    # ---- worker ----------------------------------------------------------------------------------------
    "worker-no-options": Case(("worker",), ("Missing option '--study'",)),
    "worker-storage-missing": Case(("worker", "--study", "x", "--storage", "{tmp}/nope.journal", "--store", "{store}"),
                                   ("storage '", "nope.journal' does not exist", "the storage the run uses")),
    "worker-storage-scheme": Case(("worker", "--study", "x", "--storage", "foo://x", "--store", "{store}"),
                                  ("'foo://x'",)),
    "worker-unknown-study": Case(("worker", "--study", "nope", "--storage", "{store}/optuna.journal", "--store",
                                  "{store}"), ("no study 'nope'", "{study}"), store="swept"),
    "worker-n-trials-zero": Case(("worker", "--study", "{study}", "--storage", "{store}/optuna.journal", "--n-trials",
                                  "0", "--store", "{store}"), ("--n-trials 0",), store="swept"),
    "worker-budget-in-words": Case(("worker", "--study", "{study}", "--storage", "{store}/optuna.journal", "--budget",
                                    "2 hours", "--store", "{store}"), ("invalid budget '2 hours'",), store="swept"),
    "worker-lease-timeout-too-short": Case(("worker", "--study", "{study}", "--storage", "{store}/optuna.journal",
                                            "--store", "{store}"), ("KDSWEEP_LEASE_TIMEOUT_S=2", ">= 15"),
                                           store="swept", env={"KDSWEEP_LEASE_TIMEOUT_S": "2"}),
    # ---- after the search: compress, federate, export, worker on a finished store (issue 20) -----------
    # A numeric option is refused before the command runs (cli._numbers): those cases need no store copy.
    **{f"compress-{name}": Case(("compress", "{study}", *flags, "--store", "{store}"), words,
                                store="swept" if name in _NEEDS_A_STORE else "new")
       for name, flags, words in (
           ("lr-inf", ("--lr", "inf"), ("--lr inf", "finite", "(0, 10]")),
           ("lr-nan", ("--lr", "nan"), ("--lr nan", "finite")),
           ("lr-zero", ("--lr", "0"), ("--lr 0.0", "(0, 10]")),
           ("lr-negative", ("--lr=-0.1",), ("--lr -0.1",)),
           ("lr-huge", ("--lr", "1e6"), ("--lr 1000000.0", "(0, 10]")),
           ("seed-negative", ("--seed=-1",), ("--seed -1", "0 to 4294967295")),
           ("seed-too-large", ("--seed", str(2**40)), (f"--seed {2**40}",)),
           ("epochs-negative", ("--epochs=-3",), ("--epochs -3", ">= 1")),
           ("trial-negative", ("--trial=-1",), ("--trial -1", ">= 0")),
           ("trial-unknown", ("--trial", "999"), ("999",)),
           ("prune-inf", ("--prune", "inf"), ("--prune inf", "finite")),
           ("prune-nan", ("--prune", "nan"), ("--prune nan", "finite")),
           ("bits-a-word", ("--bits", "eight"), ("'eight'",)),
           ("bits-zero", ("--bits", "0"), ("--bits 0",)),
           ("threads-zero", ("--threads", "0"), ("--threads 0",)),
           ("threads-too-many", ("--threads", "100000"), ("--threads 100000",)),
           ("study-escapes", (), ()),
           ("tracking-uri-scheme", ("--tracking-uri", "bogus://x"), ("unsupported tracking URI 'bogus://x'",)),
           ("storage-missing", ("--storage", "{tmp}/nope.journal"), ("no Optuna storage",)),
       ) if name != "study-escapes"},
    "compress-study-escapes": Case(("compress", "../../escape", "--store", "{store}"), ("'../../escape'",),
                                   store="swept"),
    "compress-journal-emptied": Case(("compress", "{study}", "--store", "{store}"), ("holds no study", "backup"),
                                     code=1, store="swept", setup="empty-journal"),
    "compress-mlflow-db-truncated": Case(("compress", "{study}", "--store", "{store}"), ("mlflow.db",), code=1,
                                         store="swept", setup="truncated-db"),
    "compress-checkpoints-truncated": Case(("compress", "{study}", "--store", "{store}"), ("cannot be read",), code=1,
                                           store="swept", setup="truncated-checkpoints"),
    "compress-store-unwritable": Case(("compress", "{study}", "--store", "{store}"), ("no permission",),
                                      store="swept", setup="read-only-store",
                                      skip="root writes anywhere" if IS_ROOT else ""),
    **{f"federate-{name}": Case(("federate", "{study}", *flags, "--store", "{store}"), words,
                                store="swept" if name in _NEEDS_A_STORE else "new")
       for name, flags, words in (
           ("lr-inf", ("--lr", "inf"), ("--lr inf", "finite")),
           ("lr-nan", ("--lr", "nan"), ("--lr nan", "finite")),
           ("lr-zero", ("--lr", "0"), ("--lr 0.0",)),
           ("lr-negative", ("--lr=-1",), ("--lr -1.0",)),
           ("lr-huge", ("--lr", "1e9"), ("--lr 1000000000.0", "(0, 10]")),
           ("seed-negative", ("--seed=-1",), ("--seed -1", "0 to 4294967295")),
           ("seed-too-large", ("--seed", str(2**33)), (f"--seed {2**33}",)),
           ("clients-zero", ("--clients", "0"), ("--clients",)),
           ("clients-negative", ("--clients=-2",), ("--clients",)),
           ("clients-more-than-items", ("--clients", "1000000"), ("clients=1000000",)),
           ("rounds-zero", ("--rounds", "0"), ("--rounds",)),
           ("rounds-negative", ("--rounds=-5",), ("--rounds",)),
           ("local-epochs-zero", ("--local-epochs", "0"), ("--local-epochs",)),
           ("partition-unknown", ("--partition", "skewed"), ("skewed",)),
           ("partition-alpha-zero", ("--partition", "dirichlet:0"), ("dirichlet:0",)),
           ("partition-alpha-word", ("--partition", "dirichlet:x"), ("dirichlet:x",)),
           ("partition-alpha-inf", ("--partition", "dirichlet:inf"), ("dirichlet:inf",)),
           ("trial-negative", ("--trial=-3",), ("--trial -3",)),
           ("trial-unknown", ("--trial", "999"), ("999",)),
           ("threads-zero", ("--threads", "0"), ("--threads 0",)),
           ("rounds-a-word", ("--rounds", "many"), ("'many'",)),
       )},
    "federate-unknown-study": Case(("federate", "nope", "--store", "{store}"), ("unknown study 'nope'",),
                                   store="swept"),
    "federate-journal-emptied": Case(("federate", "{study}", "--store", "{store}"), ("holds no study",), code=1,
                                     store="swept", setup="empty-journal"),
    "federate-mlflow-db-random": Case(("federate", "{study}", "--store", "{store}"), ("mlflow.db",), code=1,
                                      store="swept", setup="random-db"),
    "federate-checkpoints-truncated": Case(("federate", "{study}", "--store", "{store}"), ("cannot be read",), code=1,
                                           store="swept", setup="truncated-checkpoints"),
    "federate-store-unwritable": Case(("federate", "{study}", "--store", "{store}"), ("no permission",),
                                      store="swept", setup="read-only-store",
                                      skip="root writes anywhere" if IS_ROOT else ""),
    **{f"export-{name}": Case(("export", "{study}", "--out", out, *flags, "--store", "{store}"), words, store="swept",
                              setup=setup, code=1 if setup in ("truncated-checkpoints", "empty-journal") else 2)
       for name, out, flags, words, setup in (
           ("out-is-the-mlflow-db", "{store}/mlflow.db", (), ("is the MLflow database", "never written over"), None),
           ("out-is-the-journal", "{store}/optuna.journal", (), ("is the Optuna storage",), None),
           ("out-is-the-journal-no-mlflow", "{store}/optuna.journal", ("--no-mlflow",), ("is the Optuna storage",),
            None),
           ("out-inside-the-store", "{store}/student.pt2", (), ("inside the store",), None),
           ("out-in-the-store-artifacts", "{store}/artifacts/x.pt2", ("--force",), ("inside the store",), None),
           ("out-is-the-store", "{store}", (), ("is the store",), None),
           ("out-through-dot-dot", "{tmp}/work/../store/s.pt2", (), ("inside the store",), None),
           ("out-through-a-link", "{tmp}/link/s.pt2", (), ("inside the store",), "link-to-store"),
           ("out-exists", "{tmp}/old.pt2", (), ("exists", "--force"), "existing-out"),
           ("out-wrong-suffix", "{tmp}/s.bin", (), ("ends in .pt2",), None),
           ("out-under-a-file", "{file}/s.pt2", (), ("does not exist",), None),
           ("out-read-only-folder", "{tmp}/ro/s.pt2", (), ("no permission",), "read-only-folder"),
           ("trial-negative", "{tmp}/s.pt2", ("--trial=-1",), ("--trial -1",), None),
           ("checkpoints-truncated", "{tmp}/s.pt2", (), ("cannot be read",), "truncated-checkpoints"),
           ("journal-emptied", "{tmp}/s.pt2", (), ("holds no study",), "empty-journal"),
           ("run-empty", "{tmp}/s.pt2", ("--run", ""), ("--run",), None),
       ) if not (IS_ROOT and setup == "read-only-folder")},
    "export-store-a-file": Case(("export", "{study}", "--out", "{tmp}/s.pt2", "--store", "{file}"), ("is not a folder",)),
    **{f"worker-{name}": Case(("worker", "--study", "{study}", "--storage", "{store}/optuna.journal", *flags, "--store",
                               "{store}"), words, store="swept")
       for name, flags, words in (
           ("n-trials-negative", ("--n-trials=-1",), ("--n-trials -1",)),
           ("threads-zero", ("--threads", "0"), ("--threads 0",)),
           ("threads-too-many", ("--threads", "100000"), ("--threads 100000",)),
           ("budget-negative", ("--budget=-5m",), ("invalid budget '-5m'",)),
           ("tracking-uri-scheme", ("--tracking-uri", "bogus://x"), ("'bogus://x'",)),
       )},
    # ---- kdsweep itself --------------------------------------------------------------------------------
    "unknown-command": Case(("sweep",), ("No such command 'sweep'",)),
    "misspelt-command": Case(("trails",), ("No such command 'trails'", "'trials'")),
    "unknown-top-level-option": Case(("--bogus",), ("No such option: --bogus",)),
    "unknown-command-in-a-process": Case(("sweep",), ("No such command 'sweep'",), process=True),
}


# ---- what a case does to its folder first ----------------------------------------------------------------

def _random_db(tmp: Path) -> None:
    (tmp / "store" / "mlflow.db").write_bytes(random.Random(8).randbytes(64 << 10))


def _truncated_db(tmp: Path) -> None:
    db = tmp / "store" / "mlflow.db"
    db.write_bytes(db.read_bytes()[: db.stat().st_size // 3])


def _read_only(folder: Path) -> None:
    folder.mkdir(exist_ok=True)
    folder.chmod(0o555)


def _truncate_checkpoints(store: Path) -> None:
    """Every student checkpoint of the store cut to half its size (a disk that filled up)."""
    for path in (store / "artifacts").rglob("student.pt"):
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _garbage_line(tmp: Path) -> None:
    with (tmp / "store" / "optuna.journal").open("ab") as journal:
        journal.write(b"garbage line\n")


def fill(text: str, values: dict[str, str]) -> str:
    """``text`` with each {name} of ``values`` replaced (YAML's own braces left alone)."""
    for name, value in values.items():
        text = text.replace(f"{{{name}}}", value)
    return text


SETUPS: dict[str, Callable[[Path], None]] = {
    "random-db": _random_db,
    "truncated-db": _truncated_db,
    "empty-db": lambda tmp: (tmp / "store" / "mlflow.db").write_bytes(b""),
    "missing-db": lambda tmp: (tmp / "store" / "mlflow.db").unlink(),
    "db-folder": lambda tmp: ((tmp / "store" / "mlflow.db").unlink(), (tmp / "store" / "mlflow.db").mkdir()),
    "garbage-journal": _garbage_line,
    "journal-folder": lambda tmp: (tmp / "d.journal").mkdir(),
    "read-only-folder": lambda tmp: _read_only(tmp / "ro"),
    "read-only-store": lambda tmp: _read_only(tmp / "store"),
    "port-in-use": lambda tmp: None,  # the test holds a bound socket: {port}
    "empty-journal": lambda tmp: (tmp / "store" / "optuna.journal").write_bytes(b""),
    "truncated-checkpoints": lambda tmp: _truncate_checkpoints(tmp / "store"),
    "link-to-store": lambda tmp: (tmp / "link").symlink_to(tmp / "store"),
    "existing-out": lambda tmp: (tmp / "old.pt2").write_bytes(b"a user's own file\n"),
}


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """(size, mtime in ns) of ``root`` and of every file and folder under it, by relative path."""
    found = {".": (0, root.stat().st_mtime_ns)}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder, name)
            stat = path.lstat()
            found[str(path.relative_to(root))] = (0 if name in dirs else stat.st_size, stat.st_mtime_ns)
    return found


@pytest.fixture(scope="module")
def small_store(swept, tmp_path_factory):
    """One private copy of the swept store; each case that needs a store copies this one (fast)."""
    return copy_store(swept, tmp_path_factory.mktemp("corpus"))


def _run(case: Case, args: list[str], env: dict[str, str], cwd: Path) -> tuple[int, str, str]:
    if case.process:
        clean = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "KDSWEEP_STORE")}
        done = subprocess.run([sys.executable, "-m", "cli.main", *args], cwd=cwd, env={**clean, **env},
                              capture_output=True, text=True, timeout=120)
        return done.returncode, done.stdout, done.stderr
    result = CliRunner().invoke(app, args, env=env or None)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        import traceback

        pytest.fail("".join(traceback.format_exception(*result.exc_info)))
    return result.exit_code, result.stdout, result.stderr


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_one_line_with_its_exit_code_and_changes_nothing(name, tmp_path, monkeypatch, request):
    case = CASES[name]
    if case.skip:
        pytest.skip(case.skip)
    work = tmp_path / "work"
    work.mkdir()
    (tmp_path / "afile").write_text("not a folder\n")
    (tmp_path / "adir").mkdir()
    store = tmp_path / "store"
    if case.store == "swept":
        shutil.copytree(request.getfixturevalue("small_store").root, store)
        settle(store)
    elif case.store == "empty":
        store.mkdir()
    taken = socket.socket()  # a port in use, for the case that needs one
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    values = {"store": str(store), "config": str(tmp_path / "config.yaml"), "file": str(tmp_path / "afile"),
              "dir": str(tmp_path / "adir"), "tmp": str(tmp_path), "study": "s1",
              "port": str(taken.getsockname()[1])}
    if case.config is not None:
        content = case.config() if callable(case.config) else case.config
        config = tmp_path / "config.yaml"
        config.write_bytes(content) if isinstance(content, bytes) else config.write_text(fill(content, values))
    if case.setup:
        SETUPS[case.setup](tmp_path)
    args = [fill(arg, values) for arg in case.args]
    env = {key: fill(value, values) for key, value in case.env.items()}
    monkeypatch.chdir(work)  # a stray ./mlruns or ./reports would show up here
    before = snapshot(tmp_path)

    try:
        code, stdout, stderr = _run(case, args, env, work)
    finally:
        taken.close()
        if case.setup in ("read-only-folder", "read-only-store"):
            (tmp_path / ("ro" if case.setup == "read-only-folder" else "store")).chmod(0o755)

    lines = stderr.splitlines()
    assert code == case.code, f"exit {code}, expected {case.code}\nstdout: {stdout[-2000:]}\nstderr: {stderr[-3000:]}"
    assert len(lines) == 1 and lines[0].startswith("error: "), f"expected one error line, got:\n{stderr[-3000:]}"
    assert "Traceback" not in stderr
    assert len(lines[0]) <= MAX_LINE, f"a {len(lines[0])}-character line"
    for words in case.words:
        assert fill(words, values) in lines[0], f"{fill(words, values)!r} not in: {lines[0]}"
    assert stdout == ""
    assert snapshot(tmp_path) == before, "the case wrote to its folder (store, working directory or files)"
    for path in case.absent:
        assert not Path(path).exists(), f"{path} was created"


def test_the_corpus_has_at_least_150_cases():
    assert len(CASES) >= 150
