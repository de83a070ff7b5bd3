"""``kdsweep run``: an Optuna search over KD settings under a wall-clock budget, tracked in MLflow.

The invocation, in order: validate everything (nothing written on bad input); ready the teacher
and its cached outputs; open the study's MLflow parent run and Optuna study; reap trials whose
worker died; start the workers; watch them (live view, heartbeats, best so far) until the budget
or trial count ends; train the best configuration and its no-KD twin in paired repeats for the
KD verdict (sweeps/verdict); report.

Fail fast: when the first trials of the invocation, or several in a row, fail with the same error
(SweepPlan.failing), every worker stops, the verdict is skipped and ``SweepFailed`` (exit 1) says
why in one line. So does a sweep in which no trial completed (all pruned, failed, or cut by the
budget), unless it was interrupted (exit 130) or had nothing to run (an exhausted grid).
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import threading
import time
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from kdcore.errors import KDSweepError
from sweeps._pause import pause_at
from sweeps.search import overrides
from sweeps.search.budget import SetupClock
from sweeps.search.join import (PLAN_ATTR, joined_trials_running, plan_record, publish_window,
                                 wait_for_joined_trials, window_until)
from sweeps.search.leases import REAP_EVERY_S, close_orphan_runs, reap_stale_trials
from sweeps.search.objectives import SCORE_ATTR, score_label, val_acc
from sweeps.search.plan import DEFAULT_REPEATS, SweepPlan
from sweeps.search.space import SearchSpace
from sweeps.search.trial import DUPLICATE
from sweeps.search.worker import Interrupt, ctrl_c_sets, process_main, work
from sweeps.tracking.logged_run import Prepared, prepare
from sweeps.tracking.run_logger import RunLogger
from sweeps.tracking.shared import is_shared, publish_teacher
from sweeps.tracking.consistency import check_linked_runs, check_tracking_store
from sweeps.tracking.locks import FileLock
from sweeps.tracking.storage import display_url, open_storage, storage_lock
from sweeps.tracking.store import Store
from sweeps.verdict.paired import incomplete_verdict

if TYPE_CHECKING:
    from collections.abc import Callable

    import optuna
    from mlflow import MlflowClient

log = logging.getLogger("kdsweep")

STUDY_KIND = "study"
_POLL_S = 0.5
_PARETO_EVERY_S = 5.0  # tagging reads every run: about 0.7 s at 1000 trials
_JOINED_GRACE_S = 60.0  # a joined worker's trial past the window: its test pass, INT8 copy and uploads
_CLOSE_S = 1.0  # the repeats stop this long before the budget's end, to log the verdict and close
_THREAD_GRACE_S = 2.0  # what an abort waits for --jobs 1's trial to end on its own before reaping it


class SweepFailed(KDSweepError):
    """The sweep ended without a completed trial: its first trials (or several in a row) failed
    with the same error, or none completed (pruned, cut by the budget's end). Exit code 1."""

    exit_code = 1


@dataclass
class Snapshot:
    """What the live view shows."""

    phase: str
    elapsed_s: float
    budget_s: float
    counts: dict[str, int] = field(default_factory=dict)
    running: list[tuple[int, int]] = field(default_factory=list)  # (trial number, epoch)
    best: tuple[int, float, dict[str, Any]] | None = None
    note: str = ""
    score: str = "accuracy"  # what best's number measures (sweeps.search.objectives.score_label)


class SweepView(Protocol):
    def update(self, snapshot: Snapshot) -> None: ...

    def say(self, line: str) -> None:
        """Print ``line`` once, above the live view."""


@dataclass
class SweepSummary:
    study: str
    experiment_id: str
    parent_run_id: str
    storage_url: str
    tracking_uri: str
    wall_time_s: float
    budget_s: float
    teacher_time_s: float
    cache_time_s: float
    trials: list[optuna.trial.FrozenTrial]
    comparison: dict[str, Any]  # the KD verdict (comparison.json); {} when --repeats 0 skipped it
    interrupted: bool
    repeats: int = DEFAULT_REPEATS
    score: str = "accuracy"  # what the trials' and the verdict's *_acc numbers measure


def run_sweep(plan: SweepPlan, view: SweepView, *, enqueue_presets: bool = False,
              sweep_file: str | None = None) -> SweepSummary:
    """Run the sweep described by ``plan`` (already checked with ``check_sweep``)."""
    import optuna

    from kdcore.threads import use_threads

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    use_threads(plan.threads)  # the teacher, the cache, --jobs 1's trials and the verdict's repeats train here
    space = plan.search_space()
    store = Store(Path(plan.store_root), plan.tracking_uri)
    linked = check_tracking_store(store, plan.storage_url, plan.study)  # before anything is written
    view.update(Snapshot("teacher", time.time() - plan.started_at, plan.budget_s, note="preparing the teacher"))
    clock = SetupClock(plan.deadline)

    def on_teacher_epoch(spec, epoch) -> None:
        note, line = clock.epoch(spec.name, spec.config.epochs, epoch)
        if line:
            view.say(line)
        view.update(Snapshot("teacher", time.time() - plan.started_at, plan.budget_s, note=note))

    # The budget holds set-up too: a teacher cut by it raises OutOfTime (exit 1), its epochs saved.
    prepared = prepare(plan.task, store, device=space.fixed.get("device", "auto"), teachers=int(space.largest("teachers")),
                       on_teacher_epoch=on_teacher_epoch, deadline=plan.deadline)
    teacher_time = sum(t.train_time_s for t, _ in prepared.all_teachers() if t.trained_now)

    # The MLflow experiment, parent run and study are created here, once, before any worker
    # starts: concurrent creation of a fresh SQLite store races.
    client = store.client()
    check_linked_runs(client, linked, plan.storage_url, plan.study)
    experiment_id = store.experiment(client, plan.study)
    parent = _open_parent_run(client, experiment_id, plan, space, prepared)
    study = optuna.create_study(study_name=plan.study, storage=open_storage(plan.storage_url),
                                directions=plan.objective.directions, load_if_exists=True)
    study.set_user_attr("kdsweep.space", space.describe())
    study.set_user_attr("kdsweep.objective", plan.objective.describe())
    study.set_user_attr("kdsweep.fidelity", plan.fidelity.describe())
    if plan.objective.cost_column:
        study.set_user_attr("kdsweep.cost", plan.objective.cost_column)
    study.set_user_attr("kdsweep.task", plan.task)
    study.set_user_attr(SCORE_ATTR, score_label(prepared.task.kind))
    invocation = int(study.user_attrs.get("kdsweep.invocations", 0)) + 1
    study.set_user_attr("kdsweep.invocations", invocation)
    plan = replace(plan, experiment_id=experiment_id, parent_run_id=parent.run_id, invocation=uuid.uuid4().hex,
                   trials_before=len(study.get_trials(deepcopy=False)))
    _reap(study, client, plan)
    # What `kdsweep worker` on another host needs: the plan, the trials window, the teacher.
    study.set_user_attr(PLAN_ATTR, plan_record(plan))
    window = publish_window(study, plan.trials_deadline(study.get_trials(deepcopy=False)))
    if is_shared(plan.tracking_uri):
        publish_teacher(client, parent.run_id, prepared)
    if enqueue_presets:
        overrides.enqueue_presets(study, space)
    _log_invocation(parent, plan, prepared, teacher_time, invocation, sweep_file)

    interrupted = Interrupt()  # Ctrl-C or SIGTERM
    halt = threading.Event()  # the workers stop: Ctrl-C, or trials failing alike (fail fast)
    workers = _start_workers(plan, halt)
    with ctrl_c_sets(interrupted, halt) as signals:
        try:
            failure = _watch(study, plan, workers, client, parent, view, interrupted, halt, window, signals.check)
            _close_window(study, plan, client, view, signals.check)
            if failure is not None:
                failure = f"{failure}; {_completed_note(study, plan)}"
            elif not interrupted.is_set():
                failure = _nothing_completed(study, plan)
            signals.check()
            # A failed sweep has no configuration worth the verdict's repeats.
            comparison = {} if failure else _verdict(study, plan, space, prepared, client, view, interrupted,
                                                     invocation)
            trials = study.get_trials(deepcopy=False)
            wall = time.time() - plan.started_at
            ended = "FAILED" if failure else "INTERRUPTED" if interrupted.is_set() else "FINISHED"
            parent.log_metrics({"wall_time_s": wall, "budget_s": plan.budget_s,
                                **{f"trials_{state.lower()}": n for state, n in _counts(trials).items()}},
                               tags={"state": ended, **({"kdsweep.error": failure} if failure else {})})
            _tag_pareto(study, client, plan)
            parent.finish("FAILED" if failure else "KILLED" if interrupted.is_set() else "FINISHED")
        except KeyboardInterrupt:  # the second Ctrl-C (ctrl_c_sets): abort now, leaving nothing RUNNING
            _abort(workers, study, client, parent, plan)
            raise
    view.update(_snapshot(study, plan, "done"))
    if failure:
        raise SweepFailed(failure)
    return SweepSummary(plan.study, experiment_id, parent.run_id, display_url(plan.storage_url), plan.tracking_uri, wall,
                        plan.budget_s, teacher_time, prepared.outputs.build_time_s, trials, comparison,
                        interrupted.is_set(), plan.repeats, score_label(prepared.task.kind))


def _open_parent_run(client: MlflowClient, experiment_id: str, plan: SweepPlan, space: SearchSpace,
                     prepared: Prepared) -> RunLogger:
    """The study's parent run: reopened on resume, created with the study's fixed params otherwise.

    One per study whatever the race: processes sharing this store look and create under the
    store's lock; processes elsewhere (one tracking server, two stores) may each create one, so
    after creating, the oldest is kept and the others are deleted, tagged ``kdsweep.duplicate_of``.
    """
    created = None
    with FileLock(plan.store_root):
        if not _parent_runs(client, experiment_id):
            params = {"task": plan.task, **{f"space.{k}": v for k, v in space.describe().items()},
                      "teacher_digest": prepared.teacher.digest[:16]}
            created = RunLogger.start(client, experiment_id, plan.study, params=params,
                                      tags={"kdsweep.kind": STUDY_KIND, "optuna.study": plan.study})
    kept = min(_parent_runs(client, experiment_id), key=lambda run: (run.info.start_time, run.info.run_id))
    if created is not None and created.run_id != kept.info.run_id:
        client.set_tag(created.run_id, "kdsweep.duplicate_of", kept.info.run_id)
        client.set_terminated(created.run_id, status="KILLED")
        client.delete_run(created.run_id)
    client.update_run(kept.info.run_id, status="RUNNING")
    return RunLogger(client, kept.info.run_id)


def _parent_runs(client: MlflowClient, experiment_id: str) -> list:
    return client.search_runs([experiment_id], filter_string=f"tags.`kdsweep.kind` = '{STUDY_KIND}'")


def _reap(study: optuna.Study, client: MlflowClient, plan: SweepPlan, also_pids: set[int] = frozenset()) -> None:
    """Finish the trials and close the runs whose process died (sweeps/search/leases.py)."""
    reap_stale_trials(study, client, store_root=plan.store_root, experiment_id=plan.experiment_id,
                      lock=storage_lock(plan.storage_url), also_pids=also_pids)
    close_orphan_runs(study, client, plan.experiment_id)


def _log_invocation(parent: RunLogger, plan: SweepPlan, prepared: Prepared, teacher_time: float,
                    invocation: int, sweep_file: str | None) -> None:
    parent.log_metrics({"teacher_test_acc": prepared.teacher.test_acc, "teacher_train_time_s": teacher_time,
                        "cache_build_time_s": sum(o.build_time_s for _, o in prepared.all_teachers()),
                        **_ensemble_metrics(prepared)},
                       tags={"budget": f"{plan.budget_s:g}s", "sampler": plan.sampler, "pruner": plan.pruner,
                             "fidelity": plan.fidelity.describe(),
                             "jobs": str(plan.jobs), "threads": str(plan.threads), "invocations": str(invocation),
                             "storage": display_url(plan.storage_url), "mlflow.note.content": _note(plan)})
    parent.client.log_dict(parent.run_id, plan.search_space().describe(), "space.json")
    if sweep_file is not None:
        parent.client.log_text(parent.run_id, sweep_file, "sweep.yaml")


def _ensemble_metrics(prepared: Prepared) -> dict[str, float]:
    """Each teacher's test accuracy and, for an ensemble, that of the first 2, 3, ... together
    (equal weights): what a trial with ``teachers`` = N distils from."""
    from kdcore import make_config
    from sweeps.tracking.logged_run import ensemble_accuracy

    ready = prepared.all_teachers()
    if len(ready) == 1:
        return {}
    metrics = {f"teacher_test_acc.{teacher.name}": teacher.test_acc for teacher, _ in ready}
    for n in range(2, len(ready) + 1):
        metrics[f"ensemble_test_acc.{n}"] = ensemble_accuracy(prepared, make_config(teachers=n))
    return metrics


def _note(plan: SweepPlan) -> str:
    return (f"kdsweep study `{plan.study}` on task `{plan.task}`. Child runs are Optuna trials; "
            f"filter with `tags.state = 'COMPLETE'`. Resume: `kdsweep run --study {plan.study}`.")


def _start_workers(plan: SweepPlan, halt: threading.Event) -> list:
    if plan.jobs == 1:
        thread = threading.Thread(target=work, args=(plan, 0, halt), name="kdsweep-worker", daemon=True)
        thread.start()
        return [thread]
    context = multiprocessing.get_context("spawn")
    shared = context.Event()
    processes = [context.Process(target=process_main, args=(plan, i, shared, os.getpid()), daemon=False)
                 for i in range(plan.jobs)]
    for process in processes:
        process.start()
    # Relay the first Ctrl-C or a fail-fast stop (set on the thread Event) to the worker processes.
    threading.Thread(target=lambda: (halt.wait(), shared.set()), daemon=True).start()
    return processes


def _watch(study: optuna.Study, plan: SweepPlan, workers: list, client: MlflowClient, parent: RunLogger,
           view: SweepView, interrupted: Interrupt, halt: threading.Event, window: float,
           check_abort: Callable[[], None]) -> str | None:
    """Refresh the view, reap dead workers' trials, keep the parent's best-so-far and the trials
    window (``window``: as published so far) current; ``check_abort`` raises after a second Ctrl-C.

    Returns why the sweep failed fast (SweepPlan.failing), having stopped every worker, or None.
    """
    last_reap = last_pareto = time.time()
    best_number = None
    outlook_told = False
    tagged_complete = 0
    failure = None
    while any(w.is_alive() for w in workers):
        for w in workers:
            w.join(timeout=_POLL_S / len(workers))
        check_abort()
        now = time.time()
        if now - last_reap > REAP_EVERY_S:
            _reap(study, client, plan)
            last_reap = now
        if failure is None:
            failure = plan.failing(study.get_trials(deepcopy=False))
            if failure is not None:
                halt.set()  # the other workers' running trials stop at once, as after Ctrl-C
        note = ("stopping: trials fail alike" if failure else
                f"finishing ({interrupted.by} again aborts)" if interrupted.is_set() else "")
        if not outlook_told and (outlook := plan.outlook(study.get_trials(deepcopy=False))):
            view.say(outlook)
            outlook_told = True
        snapshot = _snapshot(study, plan, "trials", note=note)
        if snapshot.best and snapshot.best[0] != best_number:
            best_number = snapshot.best[0]
            _log_best(parent, study, best_number)
        if snapshot.counts["COMPLETE"] != tagged_complete and now - last_pareto > _PARETO_EVERY_S:
            _tag_pareto(study, client, plan)
            tagged_complete, last_pareto = snapshot.counts["COMPLETE"], now
        view.update(snapshot)
        window = publish_window(study, now if halt.is_set() else plan.trials_deadline(study.get_trials(deepcopy=False)),
                                window)
    # Worker processes that died (killed, out of memory) leave RUNNING trials behind, and so may
    # an earlier invocation that died in a short window: reap them now.
    _reap(study, client, plan, also_pids={w.pid for w in workers if isinstance(w, multiprocessing.process.BaseProcess)})
    return failure or plan.failing(study.get_trials(deepcopy=False))


def _close_window(study: optuna.Study, plan: SweepPlan, client: MlflowClient, view: SweepView,
                  check_abort: Callable[[], None]) -> None:
    """No new trial from here; wait for the trials joined workers still run (each ends by the
    window it started in, plus its test pass and upload), so the verdict and the summary see them."""
    pause_at("window.close")
    opened_until = window_until(study)
    publish_window(study, time.time())
    running = joined_trials_running(study, plan.invocation)
    if running:
        view.update(_snapshot(study, plan, "trials", note=f"waiting for {len(running)} trial(s) of joined workers"))
        wait_for_joined_trials(study, plan.invocation, lambda: _reap(study, client, plan),
                               until=max(opened_until, time.time()) + _JOINED_GRACE_S, check_abort=check_abort)


def _completed_note(study: optuna.Study, plan: SweepPlan) -> str:
    from optuna.trial import TrialState

    done = sum(t.state == TrialState.COMPLETE and plan.ran(t) for t in study.get_trials(deepcopy=False))
    where = "the trial runs carry it as the tag kdsweep.error"
    return f"{done} trial(s) completed in this run ({where})" if done else f"nothing completed ({where})"


def _nothing_completed(study: optuna.Study, plan: SweepPlan) -> str | None:
    """Why no trial of this invocation completed, or None when one did (or none was due: the
    grid was already exhausted, or --n-trials 0), so that such a sweep never exits 0."""
    from optuna.trial import TrialState

    from sweeps.search.leases import ERROR_ATTR
    from sweeps.search.worker import _grid_done

    mine = [t for t in study.get_trials(deepcopy=False) if t.state != TrialState.WAITING and plan.ran(t)]
    if any(t.state == TrialState.COMPLETE for t in mine):
        return None
    if not mine:
        if plan.n_trials == 0 or _grid_done(study):
            return None
        trials = study.get_trials(deepcopy=False)
        return (f"no trial started in this run: its {plan.budget_s:g}s budget left no time for one after "
                f"{time.time() - plan.started_at:.0f}s of set-up and {plan.reserve_s(trials):.0f}s kept for the "
                "KD verdict's repeats; give a longer --budget")
    reasons = [t.user_attrs.get("stop_reason") for t in mine]
    parts = [f"{reasons.count('deadline')} cut by the budget's end", f"{reasons.count('pruned')} pruned",
             f"{sum(t.state == TrialState.FAIL and r != DUPLICATE for t, r in zip(mine, reasons))} failed",
             *([f"{reasons.count('infeasible')} over a limit"] if "infeasible" in reasons else []),
             *([f"{reasons.count(DUPLICATE)} repeating finished trials (not trained again)"]
               if DUPLICATE in reasons else [])]
    errors = [t.user_attrs[ERROR_ATTR] for t in mine if ERROR_ATTR in t.user_attrs]
    last_error = f" (last error: {errors[-1]})" if errors else ""
    hint = ("fix the error and run again" if errors else
            "loosen the limits (--max-params ...) or narrow the search space" if reasons.count("infeasible") == len(mine)
            else "widen the search space: every proposal repeated a finished trial" if reasons.count(DUPLICATE) == len(mine)
            else "give a longer --budget")
    return f"no trial completed in this run: {', '.join(parts)}{last_error}; {hint}"


def _tag_pareto(study: optuna.Study, client: MlflowClient, plan: SweepPlan) -> None:
    """Keep the runs' ``pareto`` tags current; a failed tag write must not end the sweep."""
    from sweeps.query.trials import update_pareto_tags

    try:
        update_pareto_tags(study, client=client, store=plan.store_root, storage=plan.storage_url)
    except Exception as error:
        log.warning("could not update the pareto tags: %s", error)


def _log_best(parent: RunLogger, study: optuna.Study, number: int) -> None:
    trial = study.trials[number]
    parent.log_metrics({"best_val_acc": val_acc(trial), "best_test_acc": trial.user_attrs.get("test_acc", 0.0)},
                       tags={"best_trial": str(number), "best_params": json.dumps(trial.params),
                             "best_run_id": trial.user_attrs.get("mlflow_run_id", "")})


def _counts(trials: list[optuna.trial.FrozenTrial]) -> dict[str, int]:
    from optuna.trial import TrialState

    states = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING)
    return {s.name: sum(t.state == s for t in trials) for s in states}


def _snapshot(study: optuna.Study, plan: SweepPlan, phase: str, note: str = "") -> Snapshot:
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    best = plan.best_trial(trials)
    return Snapshot(
        phase, time.time() - plan.started_at, plan.budget_s, _counts(trials),
        [(t.number, int(t.user_attrs.get("epoch", 0))) for t in trials if t.state == TrialState.RUNNING],
        (best.number, val_acc(best), best.params) if best else None, note,
        study.user_attrs.get(SCORE_ATTR, "accuracy"))


def _verdict(study: optuna.Study, plan: SweepPlan, space: SearchSpace, prepared: Prepared, client: MlflowClient,
             view: SweepView, interrupted: Interrupt, invocation: int) -> dict[str, Any]:
    """The KD verdict on the best COMPLETE trial (by best_val_acc), logged on the parent run."""
    from sweeps.verdict.repeats import record_verdict, run_repeats

    if plan.repeats == 0:
        return {}
    best = plan.best_trial(study.get_trials(deepcopy=False))
    teacher = prepared.teacher.test_acc
    if interrupted.is_set():
        verdict = incomplete_verdict(f"interrupted ({interrupted.by}) before the paired repeats", teacher_test_acc=teacher,
                                     trial=best.number if best else None)
    elif best is None:
        within = plan.objective.limits and any(t.state.name == "COMPLETE" for t in study.get_trials(deepcopy=False))
        verdict = incomplete_verdict(
            "no COMPLETE trial is within the study's limits, so there is no configuration to compare: loosen "
            "--min-retention or the other limits" if within else
            "no trial completed, so there is no configuration to compare: give a longer --budget",
            teacher_test_acc=teacher, trial=None)
    else:
        def progress(repeat: int, arm: str) -> None:
            what = "the distilled student" if arm == "kd" else "its no-KD twin"
            view.update(_snapshot(study, plan, "repeats", note=f"pair {repeat}/{plan.repeats} of trial "
                                  f"{best.number}: training {what}"))

        verdict = run_repeats(prepared, overrides.trial_config(space, best), repeats=plan.repeats, trial=best.number,
                              client=client, experiment_id=plan.experiment_id, study=plan.study,
                              study_run_id=plan.parent_run_id, deadline=plan.deadline - _CLOSE_S,
                              interrupt=interrupted, on_start=progress,
                              tags={"kdsweep.invocation": str(invocation)},
                              pair_time=plan.pair_time(study.get_trials(deepcopy=False)), budget_s=plan.budget_s)
    verdict.setdefault("repeats_wanted", plan.repeats)
    record_verdict(client, plan.parent_run_id, verdict)
    return verdict


def _abort(workers: list, study: optuna.Study, client: MlflowClient, parent: RunLogger, plan: SweepPlan) -> None:
    pids = {os.getpid()}
    for worker in workers:
        if isinstance(worker, multiprocessing.process.BaseProcess):
            pids.add(worker.pid)
            worker.kill()
            worker.join()
        else:  # --jobs 1's thread cannot be killed; told to stop at the first Ctrl-C, it is often just ending
            worker.join(timeout=_THREAD_GRACE_S)
    # With --jobs 1 the worker thread may still be closing its run: SQLite can then answer
    # "database is locked" at once (a lock upgrade), so these last writes are retried.
    _when_unlocked(lambda: _reap(study, client, plan, also_pids=pids))
    _when_unlocked(lambda: parent.log_metrics({}, tags={"state": "ABORTED"}))
    _when_unlocked(lambda: parent.finish("KILLED"))


def _when_unlocked(write, tries: int = 10, pause_s: float = 0.3) -> None:
    """Run ``write``, again after a pause while the MLflow SQLite store says it is locked."""
    from mlflow.exceptions import MlflowException

    for attempt in range(tries):
        try:
            return write()
        except MlflowException as error:
            if "database is locked" not in str(error) or attempt == tries - 1:
                raise
            time.sleep(pause_s)
