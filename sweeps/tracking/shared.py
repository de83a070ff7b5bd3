"""What the hosts of one study share through its MLflow tracking server: the teacher, the
teacher-output cache, and the epoch checkpoints of running trials.

On a tracking server (``http://``, ``https://``) every host reads the same artifacts, so:

- ``kdsweep run`` publishes the teacher file and the cache file as artifacts of the study's parent
  run (``teacher/<path in the store>``), their sha256 and store paths as its tags; a ``kdsweep
  worker`` downloads both into its own store and verifies them before use, instead of training a
  teacher of its own;
- a running trial's latest epoch state goes to its run's artifacts (``resume/``) beside the local
  file, so a trial lost on one host resumes from its last epoch on another; it is deleted when the
  trial (or the one that re-ran it) finishes.

On the embedded store (a local SQLite file) none of this is needed: only this host can open it.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from kdcore import KDSweepError

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from sweeps.tracking.logged_run import Prepared

TEACHER_ARTIFACTS = "teacher"
CHECKPOINT_ARTIFACTS = "resume"
_KINDS = ("teacher", "cache")


class SharedFileError(KDSweepError):
    """A published teacher or cache file is missing or does not match its sha256: exit code 1."""

    exit_code = 1


def is_shared(tracking_uri: str) -> bool:
    """Whether other hosts can read this tracking store's artifacts."""
    return tracking_uri.startswith(("http://", "https://"))


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def publish_teacher(client: MlflowClient, run_id: str, prepared: Prepared) -> None:
    """Log the teacher and cache files to the study's parent run, once per content."""
    root = prepared.store.root
    tags = client.get_run(run_id).data.tags
    for kind, path in _files(prepared):
        if path is None:  # a task's pretrained teacher: every host builds it from the task's weights
            continue
        digest = file_sha256(path)
        if tags.get(f"kdsweep.{kind}_sha256") == digest:
            continue
        relative = Path(path).resolve().relative_to(root.resolve()).as_posix()
        client.log_artifact(run_id, str(path), f"{TEACHER_ARTIFACTS}/{Path(relative).parent.as_posix()}")
        client.set_tag(run_id, f"kdsweep.{kind}_path", relative)
        client.set_tag(run_id, f"kdsweep.{kind}_sha256", digest)


def _files(prepared: Prepared) -> list[tuple[str, Path | None]]:
    """(kind, path) of every file a worker needs: the teacher and its cache, then each further
    teacher of the ensemble and its cache (kinds ``teacher.<name>``, ``cache.<name>``)."""
    files: list[tuple[str, Path | None]] = [("teacher", prepared.teacher.path), ("cache", prepared.outputs.path)]
    for teacher, outputs in prepared.members:
        files += [(f"teacher.{teacher.name}", teacher.path), (f"cache.{teacher.name}", outputs.path)]
    return files


def fetch_teacher(client: MlflowClient, run_id: str, store_root: Path) -> list[str]:
    """Download the published teacher and cache into ``store_root`` where missing or different;
    SharedFileError if a download does not match its sha256. Returns what was downloaded."""
    tags = client.get_run(run_id).data.tags
    fetched = []
    published = [key.removeprefix("kdsweep.").removesuffix("_sha256") for key in tags
                 if key.startswith("kdsweep.") and key.endswith("_sha256")]
    members = tuple(f"{k}." for k in _KINDS)  # an ensemble's further teachers and caches
    wanted = [k for k in published if k in _KINDS or k.startswith(members)]
    for kind in sorted(wanted, key=lambda k: (k not in _KINDS, _KINDS.index(k.split(".")[0]), k)):
        relative, digest = tags.get(f"kdsweep.{kind}_path"), tags.get(f"kdsweep.{kind}_sha256")
        if not relative:
            continue
        target = Path(store_root) / relative
        if target.exists() and file_sha256(target) == digest:
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target.parent) as folder:
            try:
                local = Path(client.download_artifacts(run_id, f"{TEACHER_ARTIFACTS}/{relative}", folder))
            except Exception as error:
                raise SharedFileError(f"the study's {kind} file {relative} could not be downloaded from run {run_id}: "
                                      f"{str(error).splitlines()[0] if str(error) else type(error).__name__}") from None
            if file_sha256(local) != digest:
                raise SharedFileError(f"the study's {kind} file {relative} does not match its sha256 {digest[:12]}...: "
                                      "the artifact was changed or damaged; re-run `kdsweep run` on the study to "
                                      "publish it again")
            os.replace(local, target)  # in the same folder: atomic
        fetched.append(kind)
    return fetched


def upload_checkpoint(client: MlflowClient, run_id: str, path: Path) -> None:
    client.log_artifact(run_id, str(path), CHECKPOINT_ARTIFACTS)


def download_checkpoint(client: MlflowClient, run_id: str, name: str, folder: Path) -> Path | None:
    """The run's shared checkpoint ``name``, downloaded into ``folder``; None when it has none."""
    if not any(f.path == f"{CHECKPOINT_ARTIFACTS}/{name}" for f in client.list_artifacts(run_id, CHECKPOINT_ARTIFACTS)):
        return None
    return Path(client.download_artifacts(run_id, f"{CHECKPOINT_ARTIFACTS}/{name}", str(folder)))


def delete_checkpoints(client: MlflowClient, run_id: str) -> None:
    """Delete the run's shared checkpoints (MLflow's client has no call for it: its artifact
    repository does, for the server's proxied artifacts)."""
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    if not client.list_artifacts(run_id, CHECKPOINT_ARTIFACTS):
        return
    uri = client.get_run(run_id).info.artifact_uri
    get_artifact_repository(uri, tracking_uri=client.tracking_uri).delete_artifacts(CHECKPOINT_ARTIFACTS)
