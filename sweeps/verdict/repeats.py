"""The paired repeats behind the KD verdict, and the verdict recorded on the study's parent run.

Pair i (i = 1..K) trains the chosen configuration and its no-KD twin with ``seed = config.seed + i``
(same data_seed, epochs, patience, min_delta: each arm runs to its own stopping rule). The arms
alternate, KD first in odd pairs and no-KD first in even ones, so a deadline that cuts the last
pair does not always fall on the same arm. A pair counts only if both arms finished; one cut or
failed run makes the verdict ``incomplete``, and then no gain is computed at all.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from kdcore.config import no_kd_twin
from sweeps.tracking.owners import owner_tag
from sweeps.tracking.logged_run import Prepared, run_params, train_logged
from sweeps.tracking.run_logger import RunLogger
from sweeps.verdict.paired import Pair, complete_verdict, incomplete_verdict
from sweeps.verdict.timing import PairTime

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from kdcore import TrainConfig

REPEAT_KIND = "repeat"
KD, NOKD = "kd", "nokd"
COMPLETE, CUT, FAIL = "COMPLETE", "CUT", "FAIL"
FINISHED = frozenset({"completed", "early_stopped", "diverged"})  # the stopping rule ended the run
# Parent metrics that rest on the pairs: never logged for an incomplete verdict, and overwritten
# with NaN if an earlier invocation logged them (nokd_retention: the name before paired repeats).
PAIR_METRICS = ("kd_gain", "kd_gain_ci95_low", "kd_gain_ci95_high", "kd_repeats", "distilled_test_acc",
                "nokd_test_acc", "distilled_val_acc", "nokd_val_acc", "retention", "nokd_retention")
VERDICT_METRICS = (*PAIR_METRICS[:-1], "teacher_test_acc", "best_trial", "kd_repeats_wanted")
VERDICT_TAGS = ("kd_verdict", "kd_verdict_reason", "kd_verdict_trial")
VERDICT_ARTIFACT = "comparison.json"


@dataclass
class ArmRun:
    """One logged run of one arm of one pair (kept in comparison.json)."""

    repeat: int
    arm: str
    seed: int
    run_id: str | None
    state: str  # COMPLETE | CUT | FAIL
    stop_reason: str
    test_acc: float | None = None
    best_val_acc: float | None = None
    train_time_s: float | None = None


def run_repeats(
    prepared: Prepared,
    config: TrainConfig,
    *,
    repeats: int,
    trial: int | None,
    client: MlflowClient,
    experiment_id: str,
    study: str | None,
    study_run_id: str,
    deadline: float | None = None,
    interrupt: threading.Event | None = None,
    on_start: Callable[[int, str], None] | None = None,
    tags: dict[str, str] | None = None,
    pair_time: PairTime | None = None,
    budget_s: float | None = None,
) -> dict[str, Any]:
    """Train ``repeats`` pairs (``config`` and its no-KD twin) and return the verdict dict.

    No arm starts once ``deadline`` (a ``time.time()`` value) has passed or ``interrupt`` is set;
    a running arm stops at either and is logged with tag ``state`` = CUT. With ``pair_time`` (what
    a pair is expected to take; each pair that runs corrects it), a pair starts only if it fits
    before the deadline: when fewer than 2 fit from the start, none is run and the verdict says
    which budget (``budget_s``: this one) would hold them all; when the budget holds 2 or more but
    not all, the verdict rests on the whole pairs and says how many of ``repeats`` they are.
    ``on_start(i, arm)`` runs before each arm (a progress view). The dict holds the parent run's
    metric and tag names, plus ``repeats_wanted``, ``pairs_finished`` and ``runs`` (one entry per
    logged run).
    """
    shared = {**(tags or {}), "kdsweep.kind": REPEAT_KIND, "kdsweep.study_run_id": study_run_id,
              **({"optuna.study": study} if study is not None else {}),
              **({"kdsweep.repeat_of_trial": str(trial)} if trial is not None else {})}
    pairs: list[Pair] = []
    runs: list[ArmRun] = []
    stop: _Stop | None = None  # why the pairs ended before all ``repeats`` ran
    for i in range(1, repeats + 1):
        stop = _stopped(deadline, interrupt, len(pairs), repeats) or (
            _no_room(pair_time, deadline - time.time(), len(pairs), repeats, budget_s)
            if deadline is not None and pair_time is not None else None)
        if stop:
            break
        seeded = config.model_copy(update={"seed": config.seed + i})
        arms = {KD: seeded, NOKD: no_kd_twin(seeded)}
        done: dict[str, ArmRun] = {}
        started = time.monotonic()
        for arm in (KD, NOKD) if i % 2 else (NOKD, KD):
            stop = _stopped(deadline, interrupt, len(pairs), repeats)
            if stop:
                break
            if on_start is not None:
                on_start(i, arm)
            run = _run_arm(prepared, arms[arm], arm, i, client, experiment_id, shared, deadline, interrupt)
            runs.append(run)
            if run.state != COMPLETE:
                stop = _Stop(_cut_reason(run, len(pairs), repeats, _signal(interrupt)), run.stop_reason == "deadline")
                break
            done[arm] = run
        if stop:
            break
        if pair_time is not None:
            pair_time.add(time.monotonic() - started)
        pairs.append(Pair(i, seeded.seed, done[KD].test_acc, done[NOKD].test_acc, done[KD].best_val_acc,
                          done[NOKD].best_val_acc))
    verdict = _verdict(pairs, stop, repeats, prepared.teacher.test_acc, trial)
    verdict.update(kd_repeats_wanted=repeats, repeats_wanted=repeats, pairs_finished=len(pairs),
                   runs=[asdict(r) for r in runs])
    return verdict


@dataclass(frozen=True)
class _Stop:
    """Why the pairs ended early; ``by_budget`` when the budget's end, not a signal or a failure, did."""

    reason: str
    by_budget: bool = False


def _verdict(pairs: list[Pair], stop: _Stop | None, wanted: int, teacher: float, trial: int | None) -> dict[str, Any]:
    """Complete on every pair; complete on fewer when the budget held at least 2 whole pairs (and
    then it says so); otherwise incomplete, with no gain at all."""
    if stop is None:
        return complete_verdict(pairs, teacher_test_acc=teacher, trial=trial)
    if stop.by_budget and len(pairs) >= 2:
        verdict = complete_verdict(pairs, teacher_test_acc=teacher, trial=trial)
        why = stop.reason if stop.reason.startswith("the budget") else "the budget's end cut the next one"
        verdict["kd_verdict_reason"] = f"{len(pairs)} of the {wanted} pairs asked for: {why}"
        return verdict
    return incomplete_verdict(stop.reason, teacher_test_acc=teacher, trial=trial)


def _no_room(pair_time: PairTime, left_s: float, finished: int, wanted: int, budget_s: float | None) -> _Stop | None:
    """Why the next pair may not start (it would not finish before the deadline), or None."""
    if pair_time.pairs_within(left_s) >= (1 if finished else 2):
        return None
    left = max(0.0, left_s)
    if finished:
        return _Stop(f"the budget held no more pairs: pair {finished + 1} needs about {pair_time.seconds:.0f}s and "
                     f"{left:.0f}s were left", by_budget=True)
    hint = (f"; a --budget of about {_minutes(budget_s + wanted * pair_time.seconds - left)} would hold all {wanted}"
            if budget_s is not None else "")
    return _Stop(f"skipped: a verdict needs at least 2 pairs of about {pair_time.seconds:.0f}s each and {left:.0f}s "
                 f"were left{hint}", by_budget=True)


def _minutes(seconds: float) -> str:
    """A budget to type: whole minutes, rounded up."""
    return f"{max(1, math.ceil(seconds / 60))}m"


def _stopped(deadline: float | None, interrupt: threading.Event | None, finished: int, wanted: int) -> _Stop | None:
    """Why no further arm may start, or None."""
    if interrupt is not None and interrupt.is_set():
        return _Stop(f"interrupted ({_signal(interrupt)}) after {finished} of {wanted} pairs")
    if deadline is not None and time.time() >= deadline:
        return _Stop(_deadline_reason(finished, wanted), by_budget=True)
    return None


def _deadline_reason(finished: int, wanted: int) -> str:
    return (f"only {finished} of {wanted} pairs finished before the deadline: "
            "give a longer --budget or fewer --repeats")


def _signal(interrupt: threading.Event | None) -> str:
    """What interrupted the repeats: a sweep's Interrupt knows (Ctrl-C or SIGTERM)."""
    return getattr(interrupt, "by", "Ctrl-C")


def _cut_reason(run: ArmRun, finished: int, wanted: int, by: str) -> str:
    if run.state == FAIL:
        return f"repeat {run.repeat} ({run.arm}) failed: {run.stop_reason}"
    if run.stop_reason == "interrupted":
        return f"interrupted ({by}) after {finished} of {wanted} pairs"
    if run.stop_reason == "deadline":
        return _deadline_reason(finished, wanted)
    return f"repeat {run.repeat} ({run.arm}) stopped early ({run.stop_reason}) after {finished} of {wanted} pairs"


def _run_arm(prepared: Prepared, config: TrainConfig, arm: str, repeat: int, client: MlflowClient,
             experiment_id: str, tags: dict[str, str], deadline: float | None,
             interrupt: threading.Event | None) -> ArmRun:
    """One arm as its own MLflow run (not a child of the parent: child runs are trials)."""
    logger = RunLogger.start(client, experiment_id, f"repeat-{repeat}-{arm}", params=run_params(prepared, config),
                             tags={**tags, "kdsweep.arm": arm, "kdsweep.repeat": str(repeat), "state": "RUNNING",
                                   **owner_tag()})  # a later invocation closes it if this process dies
    try:
        run = train_logged(prepared, config, logger, deadline=deadline, interrupt=interrupt)
    except KeyboardInterrupt:  # a second Ctrl-C: train_logged closed the run KILLED; mark it cut
        logger.log_metrics({}, tags={"state": CUT, "stop_reason": "interrupted"})
        raise
    except Exception as error:  # train_logged closed the run FAILED; the verdict says why
        message = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}".rstrip(": ")
        logger.log_metrics({}, tags={"state": FAIL, "stop_reason": "error"})
        return ArmRun(repeat, arm, config.seed, logger.run_id, FAIL, message)
    result = run.result
    state = COMPLETE if result.stop_reason in FINISHED else CUT
    logger.log_metrics({}, tags={"state": state})
    logger.finish("KILLED" if result.stop_reason == "interrupted" else "FINISHED")
    return ArmRun(repeat, arm, config.seed, logger.run_id, state, result.stop_reason, result.test_acc,
                  result.best_val_acc, result.train_time_s)


def record_verdict(client: MlflowClient, parent_run_id: str, verdict: dict[str, Any]) -> None:
    """Log the verdict on the study's parent run: metrics, tags and ``comparison.json``.

    Readers take ``kd_verdict`` as authoritative; an incomplete verdict logs no gain, and
    overwrites with NaN any pair metric an earlier invocation left on the run.
    """
    metrics = {k: float(verdict[k]) for k in VERDICT_METRICS if verdict.get(k) is not None}
    logged = client.get_run(parent_run_id).data.metrics
    stale = {k: math.nan for k in (*VERDICT_METRICS, *PAIR_METRICS) if k in logged and k not in metrics}
    trial = verdict.get("kd_verdict_trial")
    RunLogger(client, parent_run_id).log_metrics({**metrics, **stale}, tags={
        "kd_verdict": verdict["kd_verdict"], "kd_verdict_reason": verdict.get("kd_verdict_reason", ""),
        "kd_verdict_trial": "" if trial is None else str(trial)})
    client.log_dict(parent_run_id, verdict, VERDICT_ARTIFACT)
