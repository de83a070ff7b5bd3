"""Query a study during or after a sweep: its trials as a pandas frame, the best trial, the Pareto
front, a trial's student rebuilt for inference, and the ``pareto`` tag that lets the MLflow UI
filter the Pareto-optimal trial runs. (Studies at a glance and side by side: ``sweeps.query.summary``.)

Trials are read from the Optuna storage, whose user attrs carry every number a trial reports;
the study's MLflow runs are joined in bulk (``sweeps.query._runs``) for the run status and any
number a trial logged to MLflow but not to Optuna.

Selection is on validation only: ``best`` and ``pareto`` (hence the ``pareto`` column and tags)
rank by ``best_val_acc`` unless told otherwise. ``test_acc`` is the held-out estimate of the
chosen trial; choosing by it would make it an optimistic one. A trial row carries no KD gain:
whether distillation pays is the study's verdict (``sweeps.query.summary.comparison``), measured
on paired repeats of one configuration, not against another trial.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from kdcore import ConfigError
from sweeps.query import _study_sql, _where
from sweeps.query._runs import ExperimentRuns, experiment_runs
from sweeps.query._columns import TrialColumns, from_frozen
# Selection uses validation accuracy only; test accuracy is the held-out estimate of what was chosen.
from sweeps.search.objectives import SCORE_ATTR, SELECTION_METRIC
from sweeps.tracking.storage import StoreDamagedError, default_storage_url, display_url, open_storage
from sweeps.tracking.store import Store, check_storage_path

if TYPE_CHECKING:
    import optuna
    import pandas as pd
    from mlflow import MlflowClient
    from torch import nn

PARETO_TAG = "pareto"
DEFAULT_MAXIMIZE = (SELECTION_METRIC,)
DEFAULT_MINIMIZE = ("student_params", "train_time_s")

# Numbers a trial stores as Optuna user attrs, with their column dtype ("Int64": integers that
# may be missing). The mean epoch time is ``epoch_time_s``; wall_time_s includes set-up and upload.
_ATTR_DTYPES = {
    "best_val_acc": "float64", "test_acc": "float64", "retention": "float64", "val_retention": "float64",
    "student_params": "Int64", "student_size_bytes": "Int64", "student_flops": "Int64", "latency_threads": "Int64",
    "latency_ms_b1": "float64", "latency_ms_b256": "float64",
    "int8_size_bytes": "Int64", "int8_val_acc": "float64", "int8_test_acc": "float64", "int8_latency_ms_b1": "float64",
    "train_time_s": "float64", "wall_time_s": "float64", "epochs_run": "Int64", "epoch_time_s": "float64",
}
# Of those, the ones a trial's MLflow run logs under the same name and meaning (its final metrics).
_FROM_MLFLOW = ("best_val_acc", "test_acc", "retention", "val_retention", "student_params", "student_size_bytes",
                "student_flops", "latency_ms_b1", "latency_ms_b256", "int8_size_bytes", "int8_val_acc",
                "int8_test_acc", "int8_latency_ms_b1", "train_time_s", "epochs_run")
# An embedding task's Recall@5 (its best_val_acc and test_acc are Recall@1): columns only in its frames.
_SCORE_EXTRAS = ("val_recall_at_5", "test_recall_at_5")
_STRING_COLUMNS = ("state", "stop_reason", "run_status", "mlflow_run_id", "checkpoint_uri")
# What the frame reads of a trial's attrs and of its run's tags (the rest of both stay unread).
_TRIAL_ATTRS = (*_ATTR_DTYPES, *_SCORE_EXTRAS, "stop_reason", "mlflow_run_id", "checkpoint_uri")
_RUN_TAGS = ("stop_reason", "optuna.trial_number", "kdsweep.kind")
_PARETO_BLOCK = 256  # rows compared with all others at once: 256 x 10,000 booleans a time
# Metrics where smaller is better, for ``best(..., direction=None)``.
_COSTS = ("student_params", "student_size_bytes", "student_flops", "latency_ms_b1", "latency_ms_b256",
          "int8_size_bytes", "int8_latency_ms_b1", "train_time_s", "wall_time_s", "epoch_time_s",
          "epochs_run", "duration_s")


@dataclass(frozen=True)
class Sources:
    """Where a study lives: the store (MLflow) and the Optuna storage URL."""

    store: Store
    storage_url: str

    @classmethod
    def resolve(cls, storage: str | None = None, tracking_uri: str | None = None,
                store: str | Path | None = None) -> Sources:
        paths = Store.resolve(store, tracking_uri)
        return cls(paths, storage or default_storage_url(paths.root))

    def storage(self) -> optuna.storages.BaseStorage:
        """The Optuna storage, without creating it when it does not exist yet."""
        url = self.storage_url
        check_storage_path(url)
        file = url.removeprefix("sqlite:///") if url.startswith("sqlite:///") else None if "://" in url else url
        if file is not None and not Path(file).exists():
            raise ConfigError(f"no Optuna storage at {url}: run `kdsweep run` first, or point --store/--storage "
                              "at an existing one")
        return open_storage(url)

    def study(self, name: str) -> optuna.Study:
        """The Optuna study ``name``; ConfigError listing the known studies if there is none."""
        import optuna

        storage = self.storage()
        names = sorted(s.study_name for s in storage.get_all_studies())
        if name not in names:
            logged = 0 if names else self.store.logged_runs(name)
            if logged:  # MLflow holds the study's runs, the storage no study at all: it lost them
                raise StoreDamagedError(f"Optuna storage {display_url(self.storage_url)} holds no study, but the MLflow "
                                        f"database holds {logged} run(s) of study {name!r}: the storage was emptied or "
                                        "replaced; restore it from a backup, or give the --storage it lives in")
            raise ConfigError(f"unknown study {name!r} in {self.storage_url} "
                              f"(studies: {', '.join(names) if names else 'none yet'})")
        return optuna.load_study(study_name=name, storage=storage)

    def study_trials(self, name: str) -> TrialColumns | optuna.Study:
        """The study ``name`` as the ``trials`` frame reads it: by SQL from an RDB storage, as
        columns, without the per-epoch intermediate values and with only the attrs the frame shows
        (``sweeps.query._study_sql``); else the Optuna study."""
        return _study_sql.read_columns(self.storage_url, name, user_attrs=_TRIAL_ATTRS,
                                       numbers=_ATTR_DTYPES) or self.study(name)


def trials(study: str, *, storage: str | None = None, tracking_uri: str | None = None,
           store: str | Path | None = None) -> pd.DataFrame:
    """One row per trial of ``study``: searched params, state, stop_reason, best_val_acc (what
    selection uses), test_acc (the held-out estimate), retention, size, cost, ``pareto``, the MLflow
    run id and the checkpoint URI. Numbers are numbers: floats, and ``Int64`` for counts.
    """
    sources = Sources.resolve(storage, tracking_uri, store)
    opened = sources.study_trials(study)
    if not isinstance(opened, TrialColumns):
        opened = from_frozen(opened.study_name, opened.user_attrs, opened.get_trials(deepcopy=False), _TRIAL_ATTRS)
    runs = experiment_runs(sources.store, study, tags=_RUN_TAGS, metrics=_metrics_wanted(opened))
    check_runs_found(opened, runs, sources.store)
    return trial_frame(opened, runs)


def _metrics_wanted(study: TrialColumns) -> dict[str, list[str]] | tuple[str, ...]:
    """The MLflow metrics the frame falls back on, by run: those of _FROM_MLFLOW a trial's attrs
    lack (its worker died before recording them, or it never measured them). A finished trial
    records its numbers in Optuna as well, so on 10,000 trials this is a few thousand rows of
    metrics rather than 150,000. All of them for every run when a trial names no run (it is then
    found by the run's trial-number tag)."""
    attrs = study.attrs.reindex(columns=_TRIAL_ATTRS)
    run_ids = attrs["mlflow_run_id"]
    if not run_ids.map(lambda run_id: isinstance(run_id, str) and run_id != "").all():
        return _FROM_MLFLOW
    missing = attrs[list(_FROM_MLFLOW)].isna().to_numpy()
    return {run_id: [name for name, lacks in zip(_FROM_MLFLOW, row) if lacks]
            for run_id, row in zip(run_ids, missing) if row.any()}


def check_runs_found(study: TrialColumns | optuna.Study, runs: ExperimentRuns, store: Store) -> None:
    """StoreDamagedError (exit 1) when the study's trials point at MLflow runs but the tracking store
    has no experiment for the study: its database is gone, empty, or not the one the study ran with."""
    if runs.experiment_id is not None:
        return
    linked = (study.linked if isinstance(study, TrialColumns)
              else sum(bool(t.user_attrs.get("mlflow_run_id")) for t in study.get_trials(deepcopy=False)))
    if not linked:
        return
    store.check_database(logged_trials=linked)  # missing or empty
    raise StoreDamagedError(f"MLflow store {display_url(store.tracking_uri)} has no experiment {study.study_name!r}, "
                            f"but {linked} trial(s) of the study point at runs in it: pass the --store/--tracking-uri "
                            "the study ran with, or restore its database from a backup")


def trial_frame(study: TrialColumns | optuna.Study, runs: ExperimentRuns) -> pd.DataFrame:
    """The ``trials`` frame of a study (its columns, or an open Optuna study) and its experiment's runs."""
    import pandas as pd

    if not isinstance(study, TrialColumns):
        study = from_frozen(study.study_name, study.user_attrs, study.get_trials(deepcopy=False), _TRIAL_ATTRS)
    trials, attrs, params = study.trials, study.attrs.reindex(columns=_TRIAL_ATTRS), study.params
    run = _trial_runs(attrs["mlflow_run_id"], trials["number"], runs)

    frame = pd.DataFrame({"number": trials["number"], "state": trials["state"]})
    for name in study.param_dtypes:
        frame[name] = params[name]
    for name in _ATTR_DTYPES:
        values = pd.to_numeric(attrs[name], errors="coerce")
        if name in _FROM_MLFLOW:  # a number the trial logged to MLflow but not to Optuna (its worker died)
            values = values.fillna(run[name])
        frame[name] = values
    frame["best_val_acc"] = frame["best_val_acc"].fillna(trials["value"])  # a COMPLETE trial's first value
    frame["feasible"] = trials["feasible"]
    given = attrs["stop_reason"].map(lambda reason: isinstance(reason, str) and reason != "")
    frame["stop_reason"] = attrs["stop_reason"].where(given, run["stop_reason"])
    frame["run_status"] = run["run_status"]
    frame["started"] = trials["started"]
    frame["duration_s"] = (trials["completed"] - trials["started"]).dt.total_seconds()
    frame["mlflow_run_id"] = run["run_id"].where(run["run_id"].notna(), attrs["mlflow_run_id"])
    frame["checkpoint_uri"] = attrs["checkpoint_uri"]
    dtypes = {"number": "int64", **study.param_dtypes, **_ATTR_DTYPES, "feasible": "bool", "duration_s": "float64",
              **{c: "string" for c in _STRING_COLUMNS}}
    frame = frame.astype(dtypes)
    extras = [name for name in _SCORE_EXTRAS if attrs[name].notna().any()]
    for name in extras:
        frame[name] = pd.to_numeric(attrs[name], errors="coerce").astype("float64")
    maximize, minimize = study_objectives(study)
    frame["pareto"] = frame["number"].isin(pareto(frame, maximize, minimize)["number"])
    scores = ["best_val_acc", "test_acc", *extras]
    columns = ["number", "state", *study.param_dtypes, *scores, *[c for c in _ATTR_DTYPES if c not in scores],
               "feasible", "stop_reason", "pareto", "run_status", "started", "duration_s", "mlflow_run_id",
               "checkpoint_uri"]
    frame = frame[columns].reset_index(drop=True)
    # The study's front, for pareto/best --cheapest; what best_val_acc and test_acc measure.
    frame.attrs.update(maximize=maximize, minimize=minimize, score=study.user_attrs.get(SCORE_ATTR, "accuracy"))
    return frame


def _trial_runs(run_ids: pd.Series, numbers: pd.Series, runs: ExperimentRuns) -> pd.DataFrame:
    """Each trial's MLflow run, aligned with the trials: the run the trial names, else the trial run
    tagged with its number. Columns run_id, run_status, stop_reason (tag) and _FROM_MLFLOW metrics."""
    import pandas as pd

    by_number = {int(r.tags["optuna.trial_number"]): r for r in runs.of_kind("trial")
                 if r.tags.get("optuna.trial_number", "").isdigit()}
    found = [runs.runs.get(run_id) if isinstance(run_id, str) else None for run_id in run_ids]
    found = [r or by_number.get(n) for r, n in zip(found, numbers)]
    return pd.DataFrame({
        "run_id": [r.run_id if r else None for r in found],
        "run_status": [r.status if r else None for r in found],
        "stop_reason": [r.tags.get("stop_reason") if r else None for r in found],
        **{name: [r.metrics.get(name) if r else None for r in found] for name in _FROM_MLFLOW},
    }, index=run_ids.index, dtype=object).astype({name: "float64" for name in _FROM_MLFLOW})


def study_objectives(study: TrialColumns | optuna.Study) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The columns the study's front is drawn on (maximize, minimize): validation accuracy against
    the study's --cost for a pareto search; else against parameters and training time."""
    cost = study.user_attrs.get("kdsweep.cost")
    return DEFAULT_MAXIMIZE, ((cost,) if cost else DEFAULT_MINIMIZE)


def where(frame: pd.DataFrame, expression: str | None) -> pd.DataFrame:
    """Rows where ``expression`` holds: column names, numbers, 'strings', comparisons, and/or/not.

    ``where(df, "retention > 0.95 and student_params < 20000")``. Nothing is passed to ``eval``.
    """
    return _where.where(frame, expression)


def best(study: str | pd.DataFrame, metric: str = SELECTION_METRIC, where: str | None = None, *,
         direction: str | None = None, storage: str | None = None, tracking_uri: str | None = None,
         store: str | Path | None = None) -> pd.Series:
    """The COMPLETE trial with the highest ``metric`` (lowest for a cost such as train_time_s), among
    those matching ``where`` and within the study's limits. ``study`` is a study name or a
    ``trials`` frame. Ties go to the higher best_val_acc, then to the earliest trial.

    The default, ``best_val_acc``, keeps the row's ``test_acc`` an honest held-out estimate;
    ``metric="test_acc"`` is allowed, but then the test accuracy it reports was chosen on test.
    """
    import pandas as pd

    frame = study if isinstance(study, pd.DataFrame) else trials(study, storage=storage,
                                                                 tracking_uri=tracking_uri, store=store)
    _where.check_columns(frame, [metric], "metric")
    if not pd.api.types.is_numeric_dtype(frame[metric].dtype) or pd.api.types.is_bool_dtype(frame[metric].dtype):
        raise ConfigError(f"metric {metric!r} is not a number: pick one of "
                          f"{', '.join(c for c in frame.columns if _is_number(frame[c]))}")
    direction = direction or ("minimize" if metric in _COSTS else "maximize")
    if direction not in ("maximize", "minimize"):
        raise ConfigError(f"direction {direction!r} is not allowed: use maximize or minimize")
    rows = _where.where(frame, where)
    rows = rows[(rows["state"] == "COMPLETE").fillna(False).to_numpy() & rows[metric].notna().to_numpy()]
    if "feasible" in rows.columns:  # a trial that broke one of the study's limits is never the best
        rows = rows[rows["feasible"].fillna(True).to_numpy(dtype=bool)]
    if rows.empty:
        of = f" of study {study!r}" if isinstance(study, str) else ""
        raise ConfigError(f"no COMPLETE trial{of} within the study's limits has a {metric}"
                          + (f" where {where}" if where else ""))
    by, ascending = [metric], [direction == "minimize"]
    if metric != SELECTION_METRIC:  # equally cheap: the more accurate one (then the earlier)
        by, ascending = [metric, SELECTION_METRIC], [direction == "minimize", False]
    ordered = rows.sort_values(by, ascending=ascending, kind="stable")
    return ordered.iloc[0]


def trial_row(frame: pd.DataFrame, study: str, number: int) -> pd.Series:
    """Trial ``number``'s row of a ``trials`` frame; ConfigError when the study has none."""
    rows = frame[frame["number"] == number]
    if rows.empty:
        raise ConfigError(f"study {study!r} has no trial {number}")
    return rows.iloc[0]


def _is_number(column: pd.Series) -> bool:
    import pandas as pd

    return pd.api.types.is_numeric_dtype(column.dtype) and not pd.api.types.is_bool_dtype(column.dtype)


def pareto(df: pd.DataFrame, maximize: tuple[str, ...] | list[str] | None = None,
           minimize: tuple[str, ...] | list[str] | None = None, *,
           states: tuple[str, ...] | None = ("COMPLETE",)) -> pd.DataFrame:
    """The rows of ``df`` no other row beats on every objective (and strictly on one); by default
    the study's objectives (``df.attrs``, set by ``trials``): max best_val_acc (selection on
    validation only) against the study's --cost, or min student_params and train_time_s.

    Only rows in ``states`` count when ``df`` has a ``state`` column (pass ``states=None`` for
    all rows), and only rows within the study's limits when it has a ``feasible`` column; rows
    missing an objective are left out.
    """
    import numpy as np

    maximize = tuple(maximize if maximize is not None else df.attrs.get("maximize", DEFAULT_MAXIMIZE))
    minimize = tuple(minimize if minimize is not None else df.attrs.get("minimize", DEFAULT_MINIMIZE))
    if "feasible" in df.columns:
        df = df[df["feasible"].to_numpy(dtype=bool)]

    objectives = [*maximize, *minimize]
    if not objectives:
        raise ConfigError("pareto needs at least one objective to maximize or minimize")
    _where.check_columns(df, objectives, "objective")
    for name in objectives:
        if not _is_number(df[name]):
            raise ConfigError(f"objective {name!r} is not a number: pick from "
                              f"{', '.join(c for c in df.columns if _is_number(df[c]))}")
    rows = df
    if states is not None and "state" in df.columns:
        rows = rows[rows["state"].isin(list(states)).fillna(False).to_numpy()]
    rows = rows.dropna(subset=objectives)
    # Every objective as a cost: maximized ones negated.
    costs = np.column_stack([rows[c].to_numpy(dtype="float64") * (-1.0 if c in maximize else 1.0)
                             for c in objectives]) if len(rows) else np.empty((0, len(objectives)))
    dominated = np.zeros(len(rows), dtype=bool)
    for start in range(0, len(rows), _PARETO_BLOCK):  # a block of rows against all rows at once
        block = costs[start:start + _PARETO_BLOCK]
        no_worse = np.ones((len(block), len(costs)), dtype=bool)
        better = np.zeros_like(no_worse)
        for k in range(costs.shape[1]):  # one objective at a time: no reduction over a short axis
            no_worse &= costs[None, :, k] <= block[:, k, None]
            better |= costs[None, :, k] < block[:, k, None]
        dominated[start:start + _PARETO_BLOCK] = (no_worse & better).any(axis=1)
    return rows[~dominated]


def load_student(study: str, trial: int | pd.Series, *, storage: str | None = None,
                 tracking_uri: str | None = None, store: str | Path | None = None) -> nn.Module:
    """The student of trial ``trial`` (a number, or a row of ``trials``/``best``) rebuilt from its
    checkpoint artifact (loaded with ``weights_only=True``), on the CPU in eval mode."""
    import numbers

    number = int(trial) if isinstance(trial, numbers.Integral) else int(trial["number"])
    sources = Sources.resolve(storage, tracking_uri, store)
    found = [t for t in sources.study(study).get_trials(deepcopy=False) if t.number == number]
    if not found:
        raise ConfigError(f"study {study!r} has no trial {number}")
    uri = found[0].user_attrs.get("checkpoint_uri")
    if not uri:
        raise ConfigError(f"trial {number} of study {study!r} has no checkpoint (state {found[0].state.name})")
    return _student_at(uri, sources.store)


def load_run_student(run_id: str, *, tracking_uri: str | None = None, store: str | Path | None = None) -> nn.Module:
    """The student a kdsweep run logged (a trial, a ``federate`` or a ``compress`` step), ready to
    run on the CPU in eval mode: a pruned one in its pruned shape, a quantization-aware one as
    ``kdcore.compress.deployable`` runs it (Linear layers in int8 at 8 bits)."""
    from mlflow.exceptions import MlflowException

    from sweeps.tracking.run_logger import CHECKPOINT_DIR, CHECKPOINT_FILE

    paths = Store.resolve(store, tracking_uri)
    try:
        paths.client().get_run(run_id)
    except MlflowException:
        raise ConfigError(f"no run {run_id!r} in the tracking store {paths.tracking_uri}") from None
    return _student_at(f"runs:/{run_id}/{CHECKPOINT_DIR}/{CHECKPOINT_FILE}", paths)


def _student_at(uri: str, store: Store) -> nn.Module:
    import tempfile

    from mlflow.artifacts import download_artifacts
    from mlflow.exceptions import MlflowException

    from kdcore import get_task
    from kdcore._files import load_checkpoint
    from kdcore.compress import deployable, rebuild
    from sweeps.tracking.run_logger import STUDENT_FORMAT

    store.settle()  # a copied or moved store: its artifacts are here, not where they were logged
    with tempfile.TemporaryDirectory() as tmp, _no_progress_bars():
        try:
            path = download_artifacts(artifact_uri=uri, dst_path=tmp, tracking_uri=store.tracking_uri)
        except (MlflowException, OSError) as error:
            raise ConfigError(f"no student checkpoint at {uri}: {str(error).splitlines()[0]}") from None
        checkpoint = load_checkpoint(Path(path), "student checkpoint", shown=uri)
    if checkpoint.get("format") != STUDENT_FORMAT:
        raise ConfigError(f"{uri} is not a kdsweep student checkpoint (format {checkpoint.get('format')!r}, "
                          f"expected {STUDENT_FORMAT!r})")
    model = get_task(checkpoint["task"]).build_student(checkpoint["ratio"])
    if "structure" in checkpoint:  # pruned: narrower layers than build_student's
        rebuild(model, checkpoint["structure"], checkpoint["state_dict"])
    else:
        model.load_state_dict(checkpoint["state_dict"])
    if "bits" in checkpoint:  # baked at a bit width: convert as the compress step measured it
        model, _ = deployable(model, checkpoint["bits"])
    return model.eval()


@contextlib.contextmanager
def _no_progress_bars() -> Iterator[None]:
    """MLflow draws a progress bar per download unless told not to (a user's own setting wins)."""
    name = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    if name in os.environ:
        yield
        return
    os.environ[name] = "false"
    try:
        yield
    finally:
        os.environ.pop(name, None)


def update_pareto_tags(study: str | optuna.Study, *, client: MlflowClient | None = None,
                       storage: str | None = None, tracking_uri: str | None = None,
                       store: str | Path | None = None) -> list[int]:
    """Tag each trial's MLflow run ``pareto=true`` if it is Pareto-optimal among the COMPLETE trials
    within the study's limits (on its objectives, see ``pareto``), ``pareto=false`` otherwise; RUNNING
    trials are left alone. Writes only the tags that change. Returns the Pareto-optimal trial numbers.

    From a sweep: ``update_pareto_tags(study, client=client)`` with the open ``optuna.Study`` and
    its ``MlflowClient``; otherwise by name, with the same store options as ``trials``.
    """
    sources = Sources.resolve(storage, tracking_uri or (client.tracking_uri if client else None), store)
    opened = study if not isinstance(study, str) else sources.study(study)
    client = client or sources.store.client()
    runs = experiment_runs(sources.store, opened.study_name, client=client)
    frame = trial_frame(opened, runs)
    for number, state, optimal, run_id in frame[["number", "state", "pareto", "mlflow_run_id"]].itertuples(index=False):
        run = runs.runs.get(run_id) if isinstance(run_id, str) else None
        if run is None or state == "RUNNING":
            continue
        wanted = "true" if optimal else "false"
        if run.tags.get(PARETO_TAG) != wanted:
            client.set_tag(run.run_id, PARETO_TAG, wanted)
    return sorted(int(n) for n in frame.loc[frame["pareto"], "number"])
