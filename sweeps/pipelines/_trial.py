"""The trial a pipeline starts from: the study's best by validation, or the one asked for."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kdcore import ConfigError

if TYPE_CHECKING:
    import optuna

    from kdcore import TrainConfig
    from sweeps.query.trials import Sources


@dataclass(frozen=True)
class Chosen:
    sources: Sources
    study: optuna.Study
    row: Any  # the trial's row of ``sweeps.query.trials``
    number: int
    config: TrainConfig  # the trial's training settings, rebuilt from its params and the study's fixed ones
    task_spec: str


def choose_trial(study: str, trial: int | None, *, invocation: str, storage: str | None,
                 tracking_uri: str | None, store: str | Path | None) -> Chosen:
    """Trial ``trial`` of ``study`` (default: the best by validation within the study's limits),
    which must be COMPLETE; ConfigError first if this process cannot write the store (a pipeline
    writes runs, checkpoints and the task's data there)."""
    from sweeps.query.trials import Sources, best, trial_row, trials
    from sweeps.search.join import joined_plan
    from sweeps.search.overrides import trial_config

    sources = Sources.resolve(storage, tracking_uri, store)
    sources.store.check_writable()
    opened = sources.study(study)
    frame = trials(study, storage=storage, tracking_uri=tracking_uri, store=store)
    row = best(frame) if trial is None else trial_row(frame, study, trial)
    if row["state"] != "COMPLETE":
        raise ConfigError(f"trial {row['number']} of study {study!r} is {row['state']}, not COMPLETE: "
                          f"{invocation} a complete trial (default: the best)")
    number = int(row["number"])
    plan = joined_plan(opened, store_root=sources.store.root, tracking_uri=sources.store.tracking_uri,
                       storage_url=sources.storage_url, budget_s=1.0, started_at=time.time(), n_trials=None,
                       invocation=invocation)
    config = trial_config(plan.search_space(), opened.trials[number])
    return Chosen(sources, opened, row, number, config, opened.user_attrs["kdsweep.task"])


def open_study_runs(chosen: Chosen) -> tuple[Any, str]:
    """The MLflow client and the study's experiment, for a pipeline to write its runs in, after
    closing the runs of this study whose process was killed (``tracking.owners``)."""
    from sweeps.tracking.owners import close_dead_runs

    store = chosen.sources.store
    client = store.client()
    experiment = store.experiment(client, chosen.study.study_name)
    close_dead_runs(client, [experiment])
    return client, experiment


def study_run(client: Any, study: str) -> str | None:
    """The run id of the study's parent run, of which pipeline runs are children."""
    experiment = client.get_experiment_by_name(study)
    runs = client.search_runs([experiment.experiment_id], filter_string="tags.`kdsweep.kind` = 'study'",
                              max_results=1) if experiment else []
    return runs[0].info.run_id if runs else None
