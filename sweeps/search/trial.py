"""One Optuna trial: a logged kdcore run with pruning, a lease, and per-epoch checkpoints."""

from __future__ import annotations

import logging
import statistics
import sysconfig
import threading
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kdcore import EpochResult, StopTraining
from kdcore._files import load_safe, read_problem, save_atomic
from sweeps._pause import pause_at
from sweeps.tracking.logged_run import Prepared, run_params, train_logged
from sweeps.search.costs import architecture_costs, int8_costs
from sweeps.search.leases import (ERROR_ATTR, RESUME_ATTR, RUN_ATTR, VALUES_ATTR, Lease, checkpoint_path,
                                  drop_checkpoints, enqueue_resume, resume_chain)
from sweeps.search.objectives import feasible
from sweeps.search.overrides import OVERRIDES_ATTR, PRESET_ATTR, trial_config
from sweeps.tracking.run_logger import RunLogger
from sweeps.tracking.shared import download_checkpoint, is_shared, upload_checkpoint

if TYPE_CHECKING:
    import optuna
    from mlflow import MlflowClient

    from sweeps.search.plan import SweepPlan

log = logging.getLogger("kdsweep")

# Optuna state of a trial by the trainer's stop_reason. A deadline cut is PRUNED: its score is
# real but under-trained, so it must not become "best". An interrupted trial is FAIL and is
# re-enqueued, so the next invocation of the study finishes it from its checkpoint.
_STATE_BY_STOP = {"pruned": "PRUNED", "deadline": "PRUNED", "interrupted": "FAIL"}
SHARED_CHECKPOINT_EVERY_S = 10.0
DUPLICATE = "duplicate"  # stop_reason of a proposal that repeats a finished trial
DUPLICATE_ATTR = "kdsweep.duplicate_of"


def run_trial(
    study: optuna.Study,
    trial: optuna.Trial,
    plan: SweepPlan,
    prepared: Prepared,
    client: MlflowClient,
    interrupt: threading.Event,
) -> None:
    """Run ``trial`` to the end and tell the study how it ended; never leaves it RUNNING.

    The lease comes first, before anything slow (sampling, the MLflow run): a trial RUNNING
    without one is taken for lost after a few seconds (sweeps/search/leases.py).
    """
    try:
        with Lease(study, trial._trial_id, plan.invocation):
            _run_trial(study, trial, plan, prepared, client, interrupt)
    except Exception as error:  # a broken trial must not end the sweep, nor stay RUNNING
        if study._storage.get_trial(trial._trial_id).state.is_finished():
            # Reaped meanwhile (a second Ctrl-C's abort, or another host took it for lost): the
            # reaper recorded it; this worker's late write is what failed, not the trial.
            log.info("trial %d was finished by a reaper while its worker ended it: %s", trial.number,
                     describe_error(error))
            return
        described = describe_error(error)
        log.warning("trial %d failed: %s", trial.number, described)
        _fail(study, trial, client, described)


def _fail(study: optuna.Study, trial: optuna.Trial, client: MlflowClient, error: str) -> None:
    """Close the trial's run and the trial as FAIL, each carrying ``error`` (the sweep compares
    trials' errors through the storage to stop early: SweepPlan.failing)."""
    from optuna.trial import TrialState

    run_id = study._storage.get_trial(trial._trial_id).user_attrs.get(RUN_ATTR)
    if run_id:
        client.set_tag(run_id, "state", "FAIL")
        client.set_tag(run_id, ERROR_ATTR, error)
        if client.get_run(run_id).info.status == "RUNNING":
            client.set_terminated(run_id, status="FAILED")
    if study._storage.get_trial(trial._trial_id).state == TrialState.RUNNING:
        trial.set_user_attr("stop_reason", "error")
        trial.set_user_attr(ERROR_ATTR, error)
        study.tell(trial, state=TrialState.FAIL)


_LIBRARIES = tuple({sysconfig.get_paths()[key] for key in ("stdlib", "platstdlib", "purelib", "platlib")})
_MAX_MESSAGE = 300


def describe_error(error: BaseException) -> str:
    """``Type: message (at file:line in function[, from file:line in function])`` on one line.

    ``at`` is the frame that raised; ``from`` is the innermost frame outside the standard library
    and installed packages (the task's code, or kdsweep's), when that is another frame.
    """
    message = " ".join(str(error).split()) or "(no message)"
    if len(message) > _MAX_MESSAGE:
        message = message[:_MAX_MESSAGE] + "..."
    text = f"{type(error).__name__}: {message}"
    frames = traceback.extract_tb(error.__traceback__)
    if not frames:
        return text
    where = [f"at {_short(frames[-1].filename)}:{frames[-1].lineno} in {frames[-1].name}"]
    own = next((f for f in reversed(frames) if not f.filename.startswith(_LIBRARIES)), None)
    if own is not None and own is not frames[-1]:
        where.append(f"from {_short(own.filename)}:{own.lineno} in {own.name}")
    return f"{text} ({', '.join(where)})"


def _short(filename: str) -> str:
    """A library file relative to its install folder (torch/nn/functional.py); others as given."""
    for root in sorted(_LIBRARIES, key=len, reverse=True):
        if filename.startswith(root + "/"):
            return filename[len(root) + 1:]
    return filename


def _run_trial(study: optuna.Study, trial: optuna.Trial, plan: SweepPlan, prepared: Prepared,
               client: MlflowClient, interrupt: threading.Event) -> None:
    from optuna.trial import TrialState

    started = time.time()
    space = plan.search_space()
    overrides = trial.user_attrs.get(OVERRIDES_ATTR) or {}
    space.suggest(trial, skip=overrides)
    twin = finished_twin(study, trial)
    if twin is not None:  # the same run again would only give the same numbers
        _skip_duplicate(study, trial, twin)
        return
    config = trial_config(space, trial)
    costs = architecture_costs(study, prepared, config)  # before training: a limit may rule it out
    for key, value in costs.items():
        trial.set_user_attr(key, value)
    resume, resumed_from = _resume_state(study, trial, plan, client)
    logger = RunLogger.start(
        client, plan.experiment_id, f"trial-{trial.number:04d}",
        params=run_params(prepared, config), parent_run_id=plan.parent_run_id,
        tags={"kdsweep.kind": "trial", "optuna.study": plan.study, "optuna.trial_number": str(trial.number),
              "state": "RUNNING", **({"kdsweep.resumed_from_trial": str(resumed_from)} if resumed_from is not None else {}),
              **{k: trial.user_attrs[k] for k in (PRESET_ATTR,) if k in trial.user_attrs}})
    trial.set_user_attr(RUN_ATTR, logger.run_id)
    logger.log_metrics(costs)
    for name, value in plan.objective.constraints(costs).items():  # the architecture's limits, known now
        trial.set_constraint(name, value)
    broken = plan.objective.broken(costs)
    if broken:
        _reject(study, trial, logger, broken)
        return
    own_checkpoint = checkpoint_path(plan.store_root, plan.study, trial.number)
    prunable = len(plan.objective.directions) == 1  # Optuna prunes single-objective studies only

    def report(epoch: EpochResult) -> None:
        trial.set_user_attr("epoch", epoch.epoch)
        if prunable:
            trial.report(epoch.val_acc, epoch.epoch)
            if trial.should_prune():
                raise StopTraining("pruned")

    run = train_logged(
        prepared, config, logger, on_epoch=report, resume=resume, interrupt=interrupt,
        deadline=plan.trials_deadline(study.get_trials(deepcopy=False)),
        on_checkpoint=_Checkpoints(own_checkpoint, client, logger.run_id))

    result = run.result
    state = _STATE_BY_STOP.get(result.stop_reason, "COMPLETE")
    teacher_val = prepared.teacher.val_acc
    outcome = {"best_val_acc": result.best_val_acc, "train_time_s": result.train_time_s, **costs,
               "val_retention": result.best_val_acc / teacher_val if teacher_val else 0.0}
    int8_tags: dict[str, str] = {}
    # An interrupted trial is re-run (which measures it); a deadline cut leaves no time to spare.
    if result.stop_reason not in ("interrupted", "deadline"):
        int8, int8_tags = int8_costs(prepared, config, result)
        outcome.update(int8)
    for name, value in plan.objective.constraints(outcome).items():
        if name not in trial.constraints:  # set once: the limits known only after training
            trial.set_constraint(name, value)
    within = feasible(trial)
    logger.log_metrics({k: v for k, v in outcome.items() if k not in costs},
                       tags={"state": "INTERRUPTED" if result.stop_reason == "interrupted" else state,
                             "feasible": str(within).lower(), **int8_tags})
    epoch_times = [h.epoch_time_s for h in result.history]
    for key, value in {
        **outcome,
        **int8_tags,
        "stop_reason": result.stop_reason,
        "test_acc": result.test_acc,
        "retention": run.metrics["retention"],
        "wall_time_s": time.time() - started,
        "epochs_run": result.epochs_run,
        "epoch_time_s": statistics.mean(epoch_times) if epoch_times else 0.0,
        "checkpoint_uri": run.checkpoint_uri,
        **result.extra,  # an embedding task's Recall@1 and @5 on validation and test
        **({VALUES_ATTR: plan.objective.values(outcome)} if state == "COMPLETE" else {}),
    }.items():
        trial.set_user_attr(key, value)
    logger.finish("KILLED" if result.stop_reason == "interrupted" else "FINISHED")
    pause_at("trial.finished")
    # From here a crash leaves a RUNNING trial whose run is closed: the reaper records a FINISHED
    # run's result, and finds the re-run of an interrupted one already enqueued (enqueued first).

    if result.stop_reason == "interrupted":
        enqueue_resume(study, study._storage.get_trial(trial._trial_id))
        study.tell(trial, state=TrialState.FAIL)
        return
    drop_checkpoints(study, trial.number, plan.store_root, client)
    if state == "PRUNED":
        study.tell(trial, state=TrialState.PRUNED)
    else:
        study.tell(trial, plan.objective.values(outcome))


def finished_twin(study: optuna.Study, trial: optuna.Trial) -> int | None:
    """The number of a finished trial with exactly ``trial``'s settings (params and preset
    overrides), or None. Trials cut by the deadline or failed do not count (they did not finish),
    nor does a trial that re-runs a lost one from its checkpoint (the same settings on purpose)."""
    from optuna.trial import TrialState

    if RESUME_ATTR in trial.user_attrs:
        return None
    settings = (trial.params, trial.user_attrs.get(OVERRIDES_ATTR) or {})
    for other in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
        if other.number != trial.number and other.user_attrs.get("stop_reason") != "deadline" and \
                (other.params, other.user_attrs.get(OVERRIDES_ATTR) or {}) == settings:
            return other.number
    return None


def _skip_duplicate(study: optuna.Study, trial: optuna.Trial, twin: int) -> None:
    """Close a proposal the study already ran, untrained and without an MLflow run: FAIL, which
    every sampler leaves out of what it learns from, with stop_reason ``duplicate``."""
    from optuna.trial import TrialState

    trial.set_user_attr("stop_reason", DUPLICATE)
    trial.set_user_attr(DUPLICATE_ATTR, twin)
    log.info("trial %d has the settings of finished trial %d: not trained again", trial.number, twin)
    study.tell(trial, state=TrialState.FAIL)


def _reject(study: optuna.Study, trial: optuna.Trial, logger: RunLogger, broken: list[str]) -> None:
    """A configuration whose architecture breaks a limit: PRUNED at 0 epochs, nothing trained. Its
    constraints stay with the trial, so a sampler that reads them learns to avoid the region."""
    from optuna.trial import TrialState

    why = "; ".join(broken)
    for key, value in {"stop_reason": "infeasible", "infeasible": why, "epochs_run": 0}.items():
        trial.set_user_attr(key, value)
    logger.log_metrics({"epochs_run": 0}, tags={"state": "PRUNED", "stop_reason": "infeasible",
                                                 "infeasible": why, "feasible": "false"})
    logger.finish("FINISHED")
    study.tell(trial, state=TrialState.PRUNED)


class _Checkpoints:
    """Saves every epoch's state to this host's file and, on a tracking server, to the trial's run,
    where a worker on another host finds it if this one is lost. Uploads are at most every
    SHARED_CHECKPOINT_EVERY_S: each costs a request and a write on the server, more than a whole
    epoch of a small student, so a trial lost elsewhere resumes from at most that much earlier."""

    def __init__(self, path: Path, client: MlflowClient, run_id: str) -> None:
        self.path, self.client, self.run_id = path, client, run_id
        self.shared = is_shared(client.tracking_uri)
        self.uploaded_at: float | None = None

    def __call__(self, state: dict[str, Any]) -> None:
        save_atomic(state, self.path)
        pause_at("trial.epoch")
        now = time.monotonic()
        if not self.shared or (self.uploaded_at is not None and now - self.uploaded_at < SHARED_CHECKPOINT_EVERY_S):
            return
        try:
            upload_checkpoint(self.client, self.run_id, self.path)
        except Exception as error:  # the trial goes on; only a resume elsewhere would start earlier
            log.warning("could not upload the epoch checkpoint of run %s: %s", self.run_id, error)
            return
        self.uploaded_at = now
        pause_at("checkpoint.shared")


def _resume_state(study: optuna.Study, trial: optuna.Trial, plan: SweepPlan,
                  client: MlflowClient) -> tuple[dict[str, Any] | None, int | None]:
    """The last epoch state of the trial this one re-runs, if it left one (or, when that re-run
    was itself lost before loading one, the state of the trial it re-ran, and so on): this
    host's file, else the copy on the tracking server."""
    previous = trial.user_attrs.get(RESUME_ATTR)
    if previous is None:
        return None, None
    chain = resume_chain(study, previous)
    paths = [checkpoint_path(plan.store_root, plan.study, n) for n in chain]
    path = next((p for p in paths if p.exists()), None)
    if path is None and is_shared(client.tracking_uri):
        path = _shared_checkpoint(study, chain, paths, client)
    if path is None:
        return None, previous
    try:
        state = load_safe(path)
    except Exception as error:  # a checkpoint torn by the crash: start over rather than fail
        log.warning("checkpoint of trial %d is unreadable (%s); trial %d starts from scratch",
                    previous, read_problem(error), trial.number)
        return None, previous
    trial.set_user_attr("resumed_from_epoch", state["epoch"])
    return state, previous


def _shared_checkpoint(study: optuna.Study, chain: list[int], paths: list[Path], client: MlflowClient) -> Path | None:
    """The newest checkpoint of ``chain`` on the tracking server, downloaded to its local path."""
    trials = study.get_trials(deepcopy=False)
    for number, path in zip(chain, paths):
        run_id = trials[number].user_attrs.get(RUN_ATTR)
        if not run_id:
            continue
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            found = download_checkpoint(client, run_id, path.name, path.parent)
        except Exception as error:
            log.warning("could not download the shared checkpoint of trial %d: %s", number, error)
            continue
        if found is not None:
            return found
    return None
