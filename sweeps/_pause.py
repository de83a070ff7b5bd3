"""A test hook: ``KDSWEEP_TEST_PAUSE_AT=<point>`` makes a process stop for good at that point.

The crash tests (tests/test_chaos.py) use it to SIGKILL ``kdsweep run`` inside a crash window
that is otherwise milliseconds wide. On reaching the named point the process writes its pid to
``$KDSWEEP_TEST_PAUSE_FILE`` (when set), then sleeps until it is killed. Unset, it costs one
dictionary lookup. The points:

- ``popped``: a worker took an enqueued trial (now RUNNING) and has not written its lease yet.
- ``reap.enqueued``: the reaper re-enqueued a lost trial and has not yet failed it.
- ``trial.finished``: a trial's MLflow run is closed FINISHED and its study.tell is not done yet.
- ``journal.locked``: a process holds the journal's lock, in the middle of an append.
- ``checkpoint.shared``: a trial uploaded an epoch checkpoint to the tracking server (its lease's
  heartbeat goes on: the tests of ``kdsweep worker`` kill a host that looks alive until then).
- ``compress.epoch``: a ``kdsweep compress`` step has logged an epoch (the Ctrl-C test signals it
  there, mid-step, however fast the step would otherwise end).
- ``compress.started``, ``compress.prune``, ``compress.qat8``: a step's run is created (its params
  logged), and the step is about to start.
- ``trial.epoch``: a trial saved an epoch checkpoint (the ``--jobs 2`` kill test holds both workers
  there, kills one, and releases the other).
- ``federate.started``: a federated run is created, before its first round.
- ``federate.saved``: a round's checkpoint is saved and the round is not logged yet.
- ``window.close``: ``kdsweep run`` has run its trials and is about to close the study's window to
  joined workers (the scale-out test holds it there until a lost trial was resumed elsewhere).

With ``$KDSWEEP_TEST_RELEASE_FILE`` set the process does not stop for good: it waits at the point
until that file exists, then goes on.
"""

from __future__ import annotations

import os
import time

ENV = "KDSWEEP_TEST_PAUSE_AT"
FILE_ENV = "KDSWEEP_TEST_PAUSE_FILE"
RELEASE_ENV = "KDSWEEP_TEST_RELEASE_FILE"


def pause_at(point: str) -> None:
    """Stop here for good if ``$KDSWEEP_TEST_PAUSE_AT`` names ``point``."""
    if os.environ.get(ENV) != point:
        return
    if os.environ.get(FILE_ENV):
        with open(os.environ[FILE_ENV], "a") as marker:
            marker.write(f"{os.getpid()}\n")
    release = os.environ.get(RELEASE_ENV)
    while not (release and os.path.exists(release)):
        time.sleep(0.2 if release else 3600)
