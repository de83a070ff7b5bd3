"""Sweep files: a YAML mapping of run options, a search space and fixed trainer settings.

Example (``configs/mnist1d-quick.yaml``)::

    task: mnist1d
    budget: 10m
    sampler: tpe
    pruner: median
    min_epochs: 3
    repeats: 3            # pairs of runs behind the KD verdict
    space:
      temperature: {low: 1, high: 20, log: true}
      alpha: {low: 0, high: 1}
      ratio: [0.1, 0.25, 0.5]
      lr: {low: 1.0e-4, high: 3.0e-2, log: true}
    train:
      epochs: 30
      patience: 5
      data_fraction: 0.5
"""

from __future__ import annotations

from typing import Any, Optional, Union

from pydantic import BaseModel, ConfigDict, Field

DEFAULT_BUDGET = "15m"


class SweepFile(BaseModel):
    """Every key a sweep file may hold; command-line flags override the run options."""

    model_config = ConfigDict(extra="forbid")

    task: Optional[str] = Field(None, description="Task name or package.module:factory.")
    study: Optional[str] = Field(None, description="Optuna study (and MLflow experiment) name.")
    budget: Optional[str] = Field(None, description="Wall-clock budget such as 2h, 45m or 90s.")
    n_trials: Optional[int] = Field(None, description="Stop after this many trials in this invocation.")
    jobs: Optional[int] = Field(None, description="Worker processes.")
    threads: Optional[int] = Field(None, description="Torch threads per worker (default 1).")
    sampler: Optional[str] = Field(None, description="tpe, random, grid, cmaes or qmc.")
    pruner: Optional[str] = Field(None, description="median, hyperband or none.")
    seed: Optional[int] = Field(None, description="Sampler seed.")
    storage: Optional[str] = Field(None, description="Optuna storage URL or journal file.")
    min_epochs: Optional[int] = Field(None, description="Epochs a trial must be able to run before it starts.")
    fidelity: Optional[str] = Field(None, description="epochs (default), or data[:F]: the first min_epochs epochs of every trial train on a share F (0.3) of the labelled data.")
    enqueue_presets: Optional[bool] = Field(None, description="Start the study from the named presets, each with all its settings except data_fraction, data_seed, transfer_ratio and device (the study's).")
    repeats: Optional[int] = Field(None, description="Pairs (KD, no-KD) of the best configuration behind the KD verdict; 0 skips it, 1 is too few (default 3).")
    objective: Optional[str] = Field(None, description="accuracy (default) or pareto: validation accuracy against `cost`.")
    cost: Optional[str] = Field(None, description="params, flops, latency, int8_size or train_time (pareto only).")
    max_params: Optional[int] = Field(None, description="Limit: student parameters.")
    max_flops: Optional[int] = Field(None, description="Limit: forward FLOPs per sample.")
    max_latency_ms: Optional[float] = Field(None, description="Limit: CPU latency at batch 1, one thread (ms).")
    max_size: Optional[Union[int, str]] = Field(None, description="Limit: fp32 weights' size (50KB, 1MB, bytes).")
    min_retention: Optional[float] = Field(None, description="Limit: best validation accuracy / the teacher's.")
    space: Optional[dict[str, Any]] = Field(None, description="Searched fields: range, choices or fixed value.")
    train: dict[str, Any] = Field(default_factory=dict, description="Fixed trainer settings of every trial.")
