"""A study's trials read from an Optuna RDB storage (SQLite, PostgreSQL, MySQL) by plain SQL.

``study.get_trials`` loads every trial's per-epoch intermediate values, which the ``trials`` frame
never shows: on 10,000 pruned and complete trials in PostgreSQL that is most of ten seconds. Here
one query per table (trials, values, params, user and system attributes) builds the same
FrozenTrials without them. Optuna's schema is read as its own RDB storage lays it out; a storage
whose tables do not match (an older or newer schema) is read through Optuna instead
(``read`` returns None), as is anything that is not an RDB URL. ``tests/test_query.py`` checks
both readers agree.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sweeps.query._sql import Database, key_filter, read_with

if TYPE_CHECKING:
    import optuna


@dataclass
class StudyTrials:
    """What the ``trials`` frame needs of a study: its name, user attrs and trials. An open
    ``optuna.Study`` offers the same three."""

    study_name: str
    user_attrs: dict[str, Any]
    trials: list[optuna.trial.FrozenTrial] = field(default_factory=list)

    def get_trials(self, deepcopy: bool = False) -> list[optuna.trial.FrozenTrial]:
        return list(self.trials)


_SQL_SCHEMES = ("sqlite:///", "postgresql://", "postgresql+", "mysql://", "mysql+")
_IN_STUDY = "trial_id IN (SELECT trial_id FROM trials WHERE study_id = :study)"


def read(url: str, name: str, *, user_attrs: Collection[str] | None = None,
         system_attrs: Collection[str] | None = None) -> StudyTrials | None:
    """The study ``name`` in the RDB storage at ``url``, or None when SQL cannot read it (not an RDB
    URL, no such study, a schema this reader does not know): the caller asks Optuna, which also
    gives the errors users see. ``user_attrs``/``system_attrs`` name the only trial attrs to read
    (None: all): a frame that shows 20 of a trial's attrs need not decode its leases and logs."""
    if not url.startswith(_SQL_SCHEMES):
        return None
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///").split("?", 1)[0]).is_file():
        return None  # connecting would create it
    return read_with(url, lambda db: _read(db, name, {"user_attrs": user_attrs, "system_attrs": system_attrs}))


def _read(db: Database, name: str, wanted: dict[str, Collection[str] | None]) -> StudyTrials | None:
    def rows(sql: str, **params: Any) -> list[Any]:
        return db.rows(sql, params)

    found = rows("SELECT study_id FROM studies WHERE study_name = :name", name=name)
    if len(found) != 1:
        return None
    study = found[0][0]
    key = db.key
    study_attrs = {k: json.loads(value) for k, value in
                   rows(f"SELECT {key}, value_json FROM study_user_attributes WHERE study_id = :study", study=study)}
    trials = {trial_id: _Trial(number, state, _datetime(start), _datetime(complete)) for trial_id, number, state, start, complete in rows(
        "SELECT trial_id, number, state, datetime_start, datetime_complete FROM trials WHERE study_id = :study",
        study=study)}
    for trial_id, objective, value, kind in rows(
            f"SELECT trial_id, objective, value, value_type FROM trial_values WHERE {_IN_STUDY} "
            "ORDER BY trial_value_id", study=study):
        trials[trial_id].values[objective] = _value(value, kind)
    for trial_id, param, value, distribution in rows(
            f"SELECT trial_id, param_name, param_value, distribution_json FROM trial_params WHERE {_IN_STUDY} "
            "ORDER BY param_id", study=study):
        trials[trial_id].params[param] = (value, distribution)
    for table, slot in (("trial_user_attributes", "user_attrs"), ("trial_system_attributes", "system_attrs")):
        if wanted[slot] is not None and not wanted[slot]:
            continue
        only, keys = key_filter(key, wanted[slot])
        for trial_id, k, value in rows(f"SELECT trial_id, {key}, value_json FROM {table} WHERE {_IN_STUDY}{only} "
                                       f"ORDER BY {table[:-1]}_id", study=study, **keys):
            getattr(trials[trial_id], slot)[k] = _json(value)
    frozen = sorted((t.frozen(trial_id) for trial_id, t in trials.items()), key=lambda t: t.number)
    return StudyTrials(name, study_attrs, frozen)


_NUMBER = re.compile(r"-?(0|[1-9]\d*)(\.\d+)?([eE][-+]?\d+)?")  # JSON's own number grammar


def _json(text: str) -> Any:
    """``json.loads``, about 5x faster for the plain numbers most trial attrs are."""
    if _NUMBER.fullmatch(text):
        return int(text) if text.lstrip("-").isdigit() else float(text)
    return json.loads(text)


def _datetime(value: Any) -> datetime | None:
    # SQLite hands a text query its DATETIME columns as ISO strings; PostgreSQL as datetimes.
    return datetime.fromisoformat(value) if isinstance(value, str) else value


def _value(value: float | None, kind: Any) -> float:
    kind = getattr(kind, "name", kind)  # an Enum column may come back as the enum or its name
    return float("inf") if kind == "INF_POS" else float("-inf") if kind == "INF_NEG" else float(value)


@dataclass
class _Trial:
    number: int
    state: Any
    start: Any
    complete: Any
    values: dict[int, float] = field(default_factory=dict)
    params: dict[str, tuple[float, str]] = field(default_factory=dict)
    user_attrs: dict[str, Any] = field(default_factory=dict)
    system_attrs: dict[str, Any] = field(default_factory=dict)

    def frozen(self, trial_id: int) -> optuna.trial.FrozenTrial:
        from optuna.trial import FrozenTrial, TrialState

        distributions = {name: _distribution(spec) for name, (_, spec) in self.params.items()}
        params = {name: distributions[name].to_external_repr(value) for name, (value, _) in self.params.items()}
        values = [self.values[i] for i in sorted(self.values)] or None
        state = TrialState[getattr(self.state, "name", self.state)]
        return FrozenTrial(number=self.number, state=state, value=None, values=values,
                           datetime_start=self.start, datetime_complete=self.complete, params=params,
                           distributions=distributions, user_attrs=self.user_attrs, system_attrs=self.system_attrs,
                           intermediate_values={}, trial_id=trial_id)


_DISTRIBUTIONS: dict[str, Any] = {}


def _distribution(spec: str) -> Any:
    # Every trial of a study repeats the same few distributions: parse each once.
    if spec not in _DISTRIBUTIONS:
        from optuna.distributions import json_to_distribution

        _DISTRIBUTIONS[spec] = json_to_distribution(spec)
    return _DISTRIBUTIONS[spec]
