"""Optuna samplers and pruners by the names the CLI accepts."""

from __future__ import annotations

from typing import TYPE_CHECKING

from kdcore import ConfigError

if TYPE_CHECKING:
    import optuna

    from sweeps.search.space import SearchSpace

SAMPLERS = ("tpe", "random", "grid", "cmaes", "qmc")
PRUNERS = ("median", "hyperband", "none")


def check_names(sampler: str, pruner: str) -> None:
    if sampler not in SAMPLERS:
        raise ConfigError(f"unknown sampler '{sampler}' (choose from {', '.join(SAMPLERS)})")
    if pruner not in PRUNERS:
        raise ConfigError(f"unknown pruner '{pruner}' (choose from {', '.join(PRUNERS)})")


def check_objective(sampler: str, pruner: str, objectives: int, pruner_given: bool) -> None:
    """A multi-objective search: Optuna cannot prune it, and CMA-ES cannot run it."""
    if objectives > 1 and sampler == "cmaes":
        raise ConfigError("sampler 'cmaes' cannot search two objectives: with --objective pareto use tpe "
                          "(default), random, grid or qmc")
    if objectives > 1 and pruner != "none" and pruner_given:
        raise ConfigError(f"pruner '{pruner}' cannot judge a two-objective trial (Optuna prunes single-objective "
                          "studies only): with --objective pareto trials stop by early stopping; use --pruner none")


def make_sampler(name: str, space: SearchSpace, seed: int | None, grid_points: int = 4) -> optuna.samplers.BaseSampler:
    import optuna

    check_names(name, "none")
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "grid":
        return optuna.samplers.GridSampler(space.grid(grid_points), seed=seed)
    if name == "cmaes":
        # CMA-ES handles only numeric ranges; choices fall back to independent random sampling.
        return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
    import warnings

    with warnings.catch_warnings():  # Optuna marks QMC experimental; kdsweep offers it as it is
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.QMCSampler(seed=seed, warn_independent_sampling=False)


def make_pruner(name: str, min_epochs: int, max_epochs: int) -> optuna.pruners.BasePruner:
    """Pruners never judge a trial before ``min_epochs``: early epochs of KD are noisy."""
    import optuna

    check_names("tpe", name)
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=min_epochs)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=min_epochs, max_resource=max_epochs)
    return optuna.pruners.NopPruner()
