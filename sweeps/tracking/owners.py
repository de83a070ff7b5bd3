"""Which process writes a run, and closing the runs whose process died.

Every run kdsweep opens carries ``kdsweep.owner = host:pid``. A run still RUNNING whose owner is a
dead process on this host was cut by a kill (SIGKILL, the OOM killer, a power cut), and the next
kdsweep command that writes to the store closes it, so that nothing stays RUNNING for good.
Trials' runs are closed by the lease reaper (``sweeps.search.leases``), which knows their trial's
state; this module closes the others: the verdict's repeats and the runs of ``kdsweep train``
(with ``--repeats`` too),
``compress`` and ``federate``. A federated run closed here keeps its round checkpoint: the same
command still resumes it.

A run owned by another host is left alone: only that host can tell whether its process is alive.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mlflow import MlflowClient

OWNER_TAG = "kdsweep.owner"
# The kinds of run whose owner decides whether they are alive; what each is closed as, and why.
_CLOSED_AS = {
    "repeat": ("CUT", "worker_lost"),
    "train": ("INTERRUPTED", "killed"),
    "verdict": ("INTERRUPTED", "killed"),  # `kdsweep train --repeats`'s parent run
    "compress": ("INTERRUPTED", "killed"),
    "federate": ("INTERRUPTED", "killed"),
}


def host_id() -> str:
    """This host's identity in leases and run owners: ``KDSWEEP_HOST``, else the host name."""
    return os.environ.get("KDSWEEP_HOST") or socket.gethostname()


def owner_tag() -> dict[str, str]:
    """The tag naming the process that writes a run, so a later invocation can close it if that died."""
    return {OWNER_TAG: f"{host_id()}:{os.getpid()}"}


def owner_is_gone(owner: str | None) -> bool:
    """True when ``owner`` (``host:pid``) is a process of this host that no longer runs."""
    host, _, pid = (owner or "").rpartition(":")
    return host == host_id() and pid.isdigit() and not pid_alive(int(pid))


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie, dead but not yet waited for, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def close_dead_runs(client: MlflowClient, experiment_ids: list[str]) -> list[str]:
    """Close, as KILLED, the RUNNING repeat, train, compress and federate runs of these experiments
    whose owner died on this host (tag ``state`` says how it ended, ``stop_reason`` why); returns
    their ids. Safe to run from several processes at once: closing a closed run again changes nothing."""
    if not experiment_ids:
        return []
    closed = []
    for run in client.search_runs(experiment_ids, filter_string="attributes.status = 'RUNNING'", max_results=10_000):
        tags = run.data.tags
        how = _CLOSED_AS.get(tags.get("kdsweep.kind", ""))
        if how is None or not owner_is_gone(tags.get(OWNER_TAG)):
            continue
        client.set_tag(run.info.run_id, "state", how[0])
        client.set_tag(run.info.run_id, "stop_reason", how[1])
        client.set_terminated(run.info.run_id, status="KILLED")
        closed.append(run.info.run_id)
    return closed
