"""A store written by one real short sweep, shared by the query, report and MLflow-server tests.

``kdsweep run --task digits --n-trials 8 --repeats 2`` runs once per test session (in a subprocess, as a user
would run it) into a temporary store seeded with the session's trained teacher. Tests read that
store; a test that writes (tags, artifacts, extra studies) works on ``copy_store`` instead.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

STUDY = "s1"
REPO = Path(__file__).resolve().parents[1]
# Ended by its 8 trials and 2 paired repeats, not by the clock: a short budget on a busy machine
# left the store with a single trial. The budget only bounds a run that hangs.
_SWEEP = ["run", "--task", "digits", "--budget", "10m", "--n-trials", "8", "--repeats", "2", "--study", STUDY]


@dataclass(frozen=True)
class SweepStore:
    """A store folder and the name of the study a real sweep wrote into it."""

    root: Path
    study: str = STUDY

    @property
    def tracking_uri(self) -> str:
        return f"sqlite:///{self.root / 'mlflow.db'}"

    @property
    def storage_url(self) -> str:
        return str(self.root / "optuna.journal")

    @property
    def options(self) -> list[str]:
        """The CLI flags that point a command at this store."""
        return ["--store", str(self.root)]


def kdsweep(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    """Run the kdsweep CLI in a fresh process, without the user's store or tracking URI."""
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "KDSWEEP_STORE")}
    return subprocess.run([sys.executable, "-m", "cli.main", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)


def sweep_store(tmp_path_factory, teacher_store: Path) -> SweepStore:
    """Run one short real sweep into a fresh store (the session fixture ``swept`` in conftest.py)."""
    root = tmp_path_factory.mktemp("swept") / "store"
    shutil.copytree(teacher_store / "teachers", root / "teachers")
    result = kdsweep(*_SWEEP, "--store", str(root))
    assert result.returncode == 0, f"the fixture sweep failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return SweepStore(root)


def copy_store(store: SweepStore, destination: Path) -> SweepStore:
    """A private copy of ``store`` to modify, settled in its new place as any kdsweep command would
    settle it (``Store.settle``: the copy's artifact locations point into the copy)."""
    root = destination / "store"
    shutil.copytree(store.root, root, ignore=shutil.ignore_patterns("teachers", ".cache", "checkpoints"))
    settle(root)
    return SweepStore(root, store.study)


def settle(root: Path) -> None:
    """Let a copied store point at itself before a test compares its files (the first kdsweep
    command on it would do the same)."""
    from sweeps.tracking.store import Store

    Store.resolve(root).settle()
