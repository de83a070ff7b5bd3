"""A study's trials read from an Optuna RDB storage (SQLite, PostgreSQL, MySQL) by plain SQL.

``study.get_trials`` loads every trial's per-epoch intermediate values, which the ``trials`` frame
never shows: on 10,000 pruned and complete trials in PostgreSQL that is most of ten seconds. Here
one query per table (trials, values, params, user and system attributes) gives the frame's
columns without them. Optuna's schema is read as its own RDB storage lays it out; a storage
whose tables do not match (an older or newer schema) is read through Optuna instead
(``read_columns`` returns None), as is anything that is not an RDB URL. ``tests/test_query.py`` and
``tests/test_scale_out.py`` check both give the same frame.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from pathlib import Path
from typing import Any

from sweeps.query._columns import CONSTRAINTS, TrialColumns, from_rows
from sweeps.query._sql import Database, key_filter, read_with

_SQL_SCHEMES = ("sqlite:///", "postgresql://", "postgresql+", "mysql://", "mysql+")
_IN_STUDY = "trial_id IN (SELECT trial_id FROM trials WHERE study_id = :study)"


def read_columns(url: str, name: str, *, user_attrs: Collection[str], numbers: Collection[str]) -> TrialColumns | None:
    """The study ``name`` in the RDB storage at ``url`` as columns (``sweeps.query._columns``),
    with only the user attrs named in ``user_attrs``, those in ``numbers`` parsed as numbers; None
    when SQL cannot read it (not an RDB URL, no such study, a schema this reader does not know):
    the caller asks Optuna, which also gives the errors users see."""
    if not url.startswith(_SQL_SCHEMES):
        return None
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///").split("?", 1)[0]).is_file():
        return None  # connecting would create it
    return read_with(url, lambda db: _read(db, name, user_attrs, numbers))


def _read(db: Database, name: str, user_attrs: Collection[str], numbers: Collection[str]) -> TrialColumns | None:
    def rows(sql: str, **params: Any) -> list[Any]:
        return db.rows(sql, params)

    found = rows("SELECT study_id FROM studies WHERE study_name = :name", name=name)
    if len(found) != 1:
        return None
    study = found[0][0]
    key = db.key

    def attrs(table: str, only: str, **named: str) -> list[Any]:
        return rows(f"SELECT trial_id, {key}, value_json FROM {table} WHERE {_IN_STUDY}{only} "
                    f"ORDER BY {table[:-1]}_id", study=study, **named)

    only, named = key_filter(key, user_attrs)
    return from_rows(
        name,
        {k: json.loads(value) for k, value in
         rows(f"SELECT {key}, value_json FROM study_user_attributes WHERE study_id = :study", study=study)},
        trials=rows("SELECT trial_id, number, state, datetime_start, datetime_complete FROM trials "
                    "WHERE study_id = :study", study=study),
        values=rows(f"SELECT trial_id, objective, value, value_type FROM trial_values WHERE {_IN_STUDY}",
                    study=study),
        params=rows(f"SELECT trial_id, param_name, param_value, distribution_json FROM trial_params "
                    f"WHERE {_IN_STUDY} ORDER BY param_id", study=study),
        attrs=attrs("trial_user_attributes", only, **named) if user_attrs else [],
        # Optuna keeps constraints as one list (older) or one "constraints:<name>" key each.
        system_attrs=attrs("trial_system_attributes", f" AND ({key} = :list OR {key} LIKE :each)",
                           list=CONSTRAINTS, each=f"{CONSTRAINTS}:%"),
        numbers=numbers)
