"""A trial's full trainer config, and the enqueued presets that set more than the searched fields.

A trial's config is, in order of precedence: the study's fixed settings < the trial's searched
values < its overrides. Overrides come from ``--enqueue-presets``: a preset's settings that are
not searched values inside the space (epochs, batch size, accumulation, patience, a ratio outside
the space's choices, ...) are stored as the trial user attr ``kdsweep.overrides``, so the preset
runs with all its settings and its MLflow params record them. The settings that define the
study's problem stay the study's: a preset never changes which labels the study compares on.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from kdcore import preset
from kdcore.presets import PRESETS

if TYPE_CHECKING:
    import optuna

    from kdcore import TrainConfig

    from sweeps.search.space import SearchSpace

OVERRIDES_ATTR = "kdsweep.overrides"
PRESET_ATTR = "kdsweep.preset"
# Labelled subset, its seed, the transfer set and the device: the study's problem, not a preset's.
STUDY_SETTINGS = ("data_fraction", "data_seed", "transfer_ratio", "device")
# User attrs a re-run of a trial (after Ctrl-C or a lost worker) carries over.
CARRIED_ATTRS = (OVERRIDES_ATTR, PRESET_ATTR)


class _HasParams(Protocol):
    params: dict[str, Any]
    user_attrs: dict[str, Any]


def trial_config(space: SearchSpace, trial: _HasParams) -> TrainConfig:
    """The full config a trial trains (or trained) with: fixed < searched values < overrides.

    Takes a live ``optuna.Trial`` after its values are suggested, or a ``FrozenTrial``.
    """
    return space.config({**trial.params, **(trial.user_attrs.get(OVERRIDES_ATTR) or {})})


def preset_trials(space: SearchSpace) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """Each preset as (name, searched values inside the space, overrides)."""
    entries = []
    for name in PRESETS:
        values = {k: v for k, v in preset(name).items() if k not in STUDY_SETTINGS}
        params = {k: v for k, v in values.items() if k in space.dimensions and space.dimensions[k].contains(v)}
        overrides = {k: v for k, v in values.items() if k not in params}
        space.config({**_any_point(space), **params, **overrides})  # checked before anything is written
        entries.append((name, params, overrides))
    return entries


def enqueue_presets(study: optuna.Study, space: SearchSpace) -> list[str]:
    """Put the presets the study does not have yet first in its queue; returns their names.

    Optuna's own ``skip_if_exists`` compares searched values only, and would take two presets
    that differ in their overrides alone (``fast``, ``full``) for one.
    """
    have = {t.user_attrs.get(PRESET_ATTR) for t in study.get_trials(deepcopy=False)}
    added = []
    for name, params, overrides in preset_trials(space):
        if name not in have:
            study.enqueue_trial(params, user_attrs={PRESET_ATTR: name, OVERRIDES_ATTR: overrides})
            added.append(name)
    return added


def carried_attrs(trial: _HasParams) -> dict[str, Any]:
    """The user attrs a re-run of ``trial`` must keep to train the same config."""
    return {k: trial.user_attrs[k] for k in CARRIED_ATTRS if k in trial.user_attrs}


def _any_point(space: SearchSpace) -> dict[str, Any]:
    """A value inside every dimension, to check a preset's settings against the fixed ones."""
    return {n: d.choices[0] if d.kind == "choice" else (int(d.low) if d.kind == "int" else d.low)
            for n, d in space.dimensions.items()}
