"""SweepPlan: everything a worker needs to run trials, and the budget arithmetic."""

from __future__ import annotations

import statistics
import time
import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sweeps.search.budget import format_seconds
from sweeps.search.fidelity import Fidelity
from sweeps.search.objectives import Objective, feasible, val_acc
from sweeps.search.samplers import make_pruner, make_sampler
from sweeps.search.space import SearchSpace
from sweeps.verdict.timing import PairTime

if TYPE_CHECKING:
    import optuna

DEFAULT_MIN_EPOCHS = 3  # a trial must be able to run this many epochs; pruning starts after them
DEFAULT_REPEATS = 3  # pairs of runs (KD, no-KD) behind the KD verdict
# Before any trial has finished, the repeats' time is unknown: keep this share of the budget.
_FALLBACK_SHARE = 0.25
# Pairs took 0.9 to 1.22 of their estimate on a busy 2-core VM: without room for the slow ones the
# last pair often did not fit. The room costs at most 15 % of the pairs' time when they are fast.
_PAIR_SLACK = 1.15
_CLOSE_MARGIN_S = 2.0  # closing runs and writing the summary after the last stop
_PROCESS_EXIT_S = 4.0  # measured: a worker process takes 2-4 s to exit (torch, MLflow, SQLAlchemy)
# Fail fast: the sweep stops when the first FIRST_FAILURES trials of an invocation, or the last
# FAILURES_IN_A_ROW, all failed with the same error (a broken task fails every trial alike).
FIRST_FAILURES = 3
FAILURES_IN_A_ROW = 5


@dataclass(frozen=True)
class SweepPlan:
    """Picklable settings of one ``kdsweep run`` invocation (sent to worker processes)."""

    study: str
    task: str
    store_root: str
    tracking_uri: str
    storage_url: str
    space: dict[str, Any] | None
    fixed: dict[str, Any]
    sampler: str
    pruner: str
    seed: int
    budget_s: float
    started_at: float
    min_epochs: int
    n_trials: int | None = None
    experiment_id: str = ""
    parent_run_id: str = ""
    jobs: int = 1
    threads: int = 1  # torch threads of each job (kdcore.threads)
    grid_points: int = 4
    repeats: int = DEFAULT_REPEATS
    invocation: str = ""  # this run's id, in the leases of the trials it runs (set by run_sweep)
    trials_before: int = 0  # trials the study held when this invocation began (set by run_sweep)
    objective: Objective = Objective()
    fidelity: Fidelity = Fidelity()
    joined: bool = False  # a `kdsweep worker` on a study another process runs (sweeps/search/join.py)

    @property
    def deadline(self) -> float:
        return self.started_at + self.budget_s

    def study_flags(self) -> list[str]:
        """The ``kdsweep run`` options besides the sweep file that decide what the study compares:
        a resume hint must carry them, or the resume is refused as a different study."""
        return [*self.objective.flags(), *self.fidelity.flags(self.min_epochs, DEFAULT_MIN_EPOCHS)]

    def search_space(self) -> SearchSpace:
        return SearchSpace.parse(self.space, {**self.fixed, **self.fidelity.settings(self.min_epochs)})

    def sampler_for(self, worker: int) -> optuna.samplers.BaseSampler:
        return make_sampler(self.sampler, self.search_space(), self.sampler_seed(worker), self.grid_points)

    def sampler_seed(self, worker: int) -> int:
        """Each worker's own seed, so parallel workers do not propose the same points; and in a
        resumed study (``trials_before`` > 0) one no earlier invocation used, or a seeded sampler
        would draw the first invocation's points again. Grid and QMC keep the study's seed: they
        read what was visited from the storage and go on from there."""
        if self.trials_before == 0 or self.sampler in ("grid", "qmc"):
            return self.seed + worker
        return zlib.crc32(f"{self.seed}:{worker}:{self.trials_before}".encode())

    def make_pruner(self) -> optuna.pruners.BasePruner:
        return make_pruner(self.pruner, self.min_epochs, self.search_space().max_epochs())

    def best_trial(self, trials: list[optuna.trial.FrozenTrial]) -> optuna.trial.FrozenTrial | None:
        """The COMPLETE trial within every limit with the highest validation accuracy: what the KD
        verdict judges, under either objective."""
        from optuna.trial import TrialState

        complete = [t for t in trials if t.state == TrialState.COMPLETE and t.values and feasible(t)]
        return max(complete, key=val_acc) if complete else None

    def reserve_s(self, trials: list[optuna.trial.FrozenTrial], now: float | None = None) -> float:
        """Time kept at the end for the paired repeats of the KD verdict and closing the runs.

        Once too little time is left for even 2 pairs (a first trial ran past the reserve, its time
        unknown until it ended), the verdict cannot be had in this run: the rest of the budget goes
        to more trials instead of standing idle, and the verdict then says which budget would hold it."""
        closing = _CLOSE_MARGIN_S + (_PROCESS_EXIT_S if self.jobs > 1 else 0.0)
        pair = self.pair_time(trials) if self.repeats else None
        left = self.deadline - (time.time() if now is None else now)
        if pair is not None and left < 2 * pair.seconds + closing:
            return closing
        return self.repeats_s(trials) + closing

    def repeats_s(self, trials: list[optuna.trial.FrozenTrial]) -> float:
        """The repeats' estimated time: K pairs (sweeps.verdict.timing) measured on the best COMPLETE
        trial, with room for a slow one (the pairs themselves start only if they fit). Before any
        trial completes: a full run at the median measured epoch time; before any trial is timed: a
        quarter of the budget."""
        if self.repeats == 0:
            return 0.0
        pair = self.pair_time(trials)
        return self.repeats * pair.seconds * _PAIR_SLACK if pair is not None else _FALLBACK_SHARE * self.budget_s

    def pair_time(self, trials: list[optuna.trial.FrozenTrial]) -> PairTime | None:
        """What one pair of the verdict takes, from the best COMPLETE timed trial (the one the verdict
        would judge now), else from the median timed trial at full length; None before any timing."""
        from sweeps.search.overrides import trial_config

        chosen = self.best_trial([t for t in trials if "train_time_s" in t.user_attrs])
        if chosen is not None:
            best = chosen.user_attrs
            config = trial_config(self.search_space(), chosen)
            return PairTime.from_trial(best["train_time_s"], max(0.0, best.get("wall_time_s", 0.0) - best["train_time_s"]),
                                       config.transfer_ratio if config.distills() else 0.0,
                                       best.get("epochs_run"), self.search_space().max_epochs())
        timed = [t.user_attrs for t in trials if "epoch_time_s" in t.user_attrs]
        if not timed:
            return None
        epoch_s = statistics.median(a["epoch_time_s"] for a in timed)
        overhead_s = statistics.median(max(0.0, a["wall_time_s"] - a["epoch_time_s"] * a["epochs_run"]) for a in timed)
        return PairTime.from_trial(epoch_s * self.search_space().max_epochs(), overhead_s, 0.0)

    def outlook(self, trials: list[optuna.trial.FrozenTrial], now: float | None = None) -> str | None:
        """Once a trial has completed: roughly how many more trials and how many of the verdict's
        pairs the budget holds at the speed measured so far (None before)."""
        from optuna.trial import TrialState

        complete = [t.user_attrs for t in trials if t.state == TrialState.COMPLETE and "wall_time_s" in t.user_attrs]
        if not complete:
            return None
        now = time.time() if now is None else now
        trial_s = statistics.median(a["wall_time_s"] for a in complete)
        more = max(0, int((self.trials_deadline(trials, now) - now) / trial_s))
        text = f"at this speed a full trial takes about {_seconds(trial_s)}: the budget holds about {more} more"
        if self.repeats:
            pair = self.pair_time(trials)
            fit = pair.pairs_within(self.deadline - now) if pair is not None else 0
            each = f"about {_seconds(pair.seconds)} each"
            text += (f", then the verdict's {self.repeats} pairs ({each})" if fit >= self.repeats
                     else f"; only {fit} of the verdict's {self.repeats} pairs ({each}) fit")
        return text + " (pruned trials end sooner, so more of them run)"

    def trials_deadline(self, trials: list[optuna.trial.FrozenTrial], now: float | None = None) -> float:
        """When trials must stop, leaving the reserve for the repeats."""
        return self.deadline - self.reserve_s(trials, now)

    def has_time_for_a_trial(self, trials: list[optuna.trial.FrozenTrial], now: float | None = None) -> bool:
        """Start a trial only if it can reach ``min_epochs`` before the trials' deadline.

        The estimate is the median measured epoch time of this study's trials, times
        ``min_epochs``, plus the median per-trial overhead (run set-up, test pass, upload).
        """
        now = time.time() if now is None else now
        left = self.trials_deadline(trials, now) - now
        timed = [t.user_attrs for t in trials if "epoch_time_s" in t.user_attrs]
        if not timed:
            return left > 0
        epoch = statistics.median(a["epoch_time_s"] for a in timed)
        overhead = statistics.median(max(0.0, a["wall_time_s"] - a["epoch_time_s"] * a["epochs_run"])
                                     for a in timed)
        return left > epoch * self.min_epochs + overhead

    def trials_left(self, trials: list[optuna.trial.FrozenTrial]) -> bool:
        if self.n_trials is None:
            return True
        from optuna.trial import TrialState

        # Counted by the invocation in their lease, not by number: trials enqueued by an earlier
        # invocation (presets, re-runs of lost trials) have lower numbers but run in this one, and
        # another invocation running the same study at the same time counts its own.
        started = [t for t in trials if t.state != TrialState.WAITING and self.ran(t)]
        return len(started) < self.n_trials

    def failing(self, trials: list[optuna.trial.FrozenTrial]) -> str | None:
        """Why the sweep must stop early (the error its trials keep failing with), else None.

        Only this invocation's finished trials count, in the order they finished: a study resumed
        after a fix is not stopped by the failures of the run before it.
        """
        from sweeps.search.leases import ERROR_ATTR

        ended = sorted((t for t in trials if t.state.is_finished() and self.ran(t)),
                       key=lambda t: (t.datetime_complete.timestamp() if t.datetime_complete else 0.0, t.number))
        for wanted, group, what in ((FIRST_FAILURES, ended[:FIRST_FAILURES], f"the first {FIRST_FAILURES} trials"),
                                    (FAILURES_IN_A_ROW, ended[-FAILURES_IN_A_ROW:], f"{FAILURES_IN_A_ROW} trials in a row")):
            errors = {t.user_attrs.get(ERROR_ATTR) for t in group}  # set on FAIL trials only
            if len(group) == wanted and len(errors) == 1 and None not in errors:
                return f"{what} failed with the same error: {errors.pop()}"
        return None

    def ran(self, trial: optuna.trial.FrozenTrial) -> bool:
        """Whether this invocation took ``trial`` up: its lease says so (by start time in a plan made
        outside a sweep, which has no invocation id)."""
        from sweeps.search.leases import LEASE_ATTR

        lease = trial.user_attrs.get(LEASE_ATTR) or {}
        if self.invocation:
            # A trial another process has just asked for has no lease for a few milliseconds:
            # counting it as ours could end this invocation before it ran a trial at all. Our own
            # workers write the lease before they look again, so at worst --jobs N overshoots by one.
            return lease.get("invocation") == self.invocation
        return trial.datetime_start is not None and trial.datetime_start.timestamp() >= self.started_at


def _seconds(seconds: float) -> str:
    return f"{seconds:.1f}s" if seconds < 10 else format_seconds(seconds)
