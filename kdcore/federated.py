"""Federated averaging of a distilled student across simulated clients: seed 004's last stage.

The training split is dealt out to ``clients`` shards, IID or label-skewed (``partition``). Each
round, every client trains a copy of the global model on its own shard for ``local_epochs`` with
the usual KD loss against its shard's cached teacher logits (seed 004's soft labels, computed
once), and the server averages the clients' weights, each weighed by its shard's size (FedAvg,
McMahan et al. 2017: ``fed_avg``). The global model is scored on the validation split after every
round.

Flower (flwr) is the library federated-learning users know, but its simulation engine runs the
clients on Ray; in one process the whole algorithm is the loop below, and the local step is the
shared trainer itself (``kdcore.train``), so a client trains exactly as a sweep's trial does.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.data import TensorDataset

from kdcore.config import TrainConfig
from kdcore.data import labels_of
from kdcore.errors import ConfigError, TrainingFailed
from kdcore.objective import evaluate_model
from kdcore.tasks.base import Splits, Task
from kdcore.trainer import TeacherLogits, resolve_device, train


def partition(labels: torch.Tensor, clients: int, scheme: str = "iid", *, seed: int = 0) -> list[torch.Tensor]:
    """Indices of each client's shard of a split with these ``labels``; every item in one shard.

    ``iid``: a random split into equal shares. ``dirichlet:A``: for each class, the shares of its
    items across clients are drawn from a Dirichlet(A) distribution (label skew as in Hsu et al.
    2019): small A gives each client few classes, large A approaches IID. Shards are never empty:
    a client left without items takes one from the largest shard.
    """
    if clients < 1 or clients > len(labels):
        raise ConfigError(f"clients={clients} is out of range: between 1 and the {len(labels)} training items")
    generator = torch.Generator().manual_seed(seed)
    if scheme == "iid":
        return [shard.sort().values for shard in torch.randperm(len(labels), generator=generator).tensor_split(clients)]
    alpha = _dirichlet_alpha(scheme)
    concentration = torch.distributions.Dirichlet(torch.full((clients,), alpha))
    torch.manual_seed(seed)  # Dirichlet samples from the global generator
    shards: list[list[torch.Tensor]] = [[] for _ in range(clients)]
    for label in labels.unique():
        items = (labels == label).nonzero().flatten()
        items = items[torch.randperm(len(items), generator=generator)]
        shares = concentration.sample()
        ends = (shares.cumsum(0) * len(items)).round().long().tolist()
        start = 0
        for client, end in enumerate(ends):
            shards[client].append(items[start:end])
            start = end
    result = [torch.cat(parts).sort().values for parts in shards]
    for client, shard in enumerate(result):
        if len(shard) == 0:  # a client with nothing to train on would be weighed 0 for ever
            largest = max(range(clients), key=lambda c: len(result[c]))
            result[client], result[largest] = result[largest][-1:], result[largest][:-1]
    return result


def _dirichlet_alpha(scheme: str) -> float:
    name, _, value = scheme.partition(":")
    try:
        alpha = float(value)
    except ValueError:
        alpha = float("nan")
    if name != "dirichlet" or not alpha > 0 or alpha == float("inf"):
        raise ConfigError(f"partition {scheme!r} is not allowed: use iid, or dirichlet:A with A > 0 "
                          "(e.g. dirichlet:0.5; smaller is more skewed)")
    return alpha


def check_task(task: Task) -> None:
    """ConfigError for a task FedAvg cannot serve: an embedding task's loss keeps class proxies
    outside the model, which every client would restart at random in every round."""
    if task.kind != "classification":
        raise ConfigError(f"task '{task.name}' is an {task.kind} task: federated rounds support classification "
                          "tasks only")


def fed_avg(states: Sequence[dict[str, torch.Tensor]], weights: Sequence[float]) -> dict[str, torch.Tensor]:
    """The weighted mean of the clients' weights (``weights``: their shard sizes, normalised).
    Integer buffers (BatchNorm's batch counter) are not averaged: the first client's are kept."""
    if not states or len(states) != len(weights) or sum(weights) <= 0 or any(w < 0 for w in weights):
        raise ValueError(f"fed_avg needs one weight >= 0 per state, not all 0 (got {list(weights)} for "
                         f"{len(states)} states)")
    total = float(sum(weights))
    averaged = {}
    for name, first in states[0].items():
        if not first.is_floating_point():
            averaged[name] = first.clone()
            continue
        averaged[name] = sum(state[name].double() * (w / total) for state, w in zip(states, weights)).to(first.dtype)
    return averaged


@dataclass(frozen=True)
class RoundResult:
    """One round: the global model's validation score after averaging, each client's validation
    score before it (its local model), the shard sizes, and the round's wall time."""

    round: int
    val_acc: float
    client_val_acc: list[float]
    client_sizes: list[int]
    time_s: float

    def metrics(self) -> dict[str, float]:
        return {"val_acc": self.val_acc, "round_time_s": self.time_s,
                **{f"client{i}_val_acc": acc for i, acc in enumerate(self.client_val_acc)}}


@dataclass
class FederatedResult:
    state_dict: dict[str, torch.Tensor]
    history: list[RoundResult] = field(default_factory=list)
    test_acc: float = float("nan")


def federate(task: Task, model: nn.Module, teacher: TeacherLogits, config: TrainConfig, *,
             shards: Sequence[torch.Tensor], rounds: int, local_epochs: int = 1,
             on_round: Callable[[RoundResult, dict[str, Any]], None] | None = None,
             resume: dict[str, Any] | None = None) -> FederatedResult:
    """FedAvg from ``model`` (the distilled student) for ``rounds`` rounds over ``shards`` (indices
    into the training split, from ``partition``). Each client trains with ``config`` (its KD loss,
    lr, batch size) for ``local_epochs`` on its shard and its shard's cached ``teacher`` logits;
    the client keeps its last local weights (a client has no validation data to pick an epoch by).

    ``on_round(result, checkpoint)`` runs after every round; pass the last checkpoint back as
    ``resume`` to continue an interrupted run from the round after it, as if never interrupted.
    """
    if rounds < 1 or local_epochs < 1:
        raise ConfigError(f"rounds={rounds} and local_epochs={local_epochs} must be at least 1")
    check_task(task)
    splits = task.splits()
    x, y = _tensors(splits.train)
    local = config.model_copy(update={"epochs": local_epochs, "patience": 0, "data_fraction": 1.0,
                                      "transfer_ratio": 0.0, "low_fidelity_epochs": 0})
    device = resolve_device(config.device)
    global_state = copy.deepcopy(model.state_dict())
    history: list[RoundResult] = []
    if resume is not None:
        global_state, history = resume["state_dict"], [RoundResult(**r) for r in resume["history"]]
    sizes = [len(shard) for shard in shards]
    for number in range(len(history) + 1, rounds + 1):
        started = time.perf_counter()
        states, client_scores = [], []
        for client, shard in enumerate(shards):
            shard_task = _ShardTask(task, Splits(TensorDataset(x[shard], y[shard]), splits.val, splits.test))
            shard_teacher = TeacherLogits(teacher.train[shard], teacher.val, teacher.test)
            last: dict[str, Any] = {}
            start = _with_state(model, global_state)
            result = train(shard_task, local.model_copy(update={"seed": config.seed + 1000 * number + client}),
                           teacher=shard_teacher, build_model=lambda start=start: copy.deepcopy(start),
                           on_checkpoint=last.update)
            if "model" not in last:  # no epoch ended with finite weights
                raise TrainingFailed(f"client {client}'s training in round {number} {result.stop_reason} (its loss is "
                                     f"not finite) at lr {config.lr:g}: give a lower --lr")
            states.append(last["model"])
            client_scores.append(result.history[-1].val_acc)
        global_state = fed_avg(states, sizes)
        val = evaluate_model(task, _with_state(model, global_state).to(device), _source(splits.val, config, device),
                             _no_autocast)
        history.append(RoundResult(number, val.score, client_scores, sizes, time.perf_counter() - started))
        if on_round is not None:
            on_round(history[-1], {"state_dict": global_state, "history": [vars(r) for r in history]})
    final = _with_state(model, global_state).to(device)
    test = evaluate_model(task, final, _source(splits.test, config, device), _no_autocast)
    return FederatedResult(global_state, history, test.score)


class _ShardTask(Task):
    """``task`` with one client's shard as its training split (and no transfer set)."""

    def __init__(self, task: Task, splits: Splits) -> None:
        self._task, self._splits = task, splits
        self.name, self.num_classes, self.kind = task.name, task.num_classes, task.kind

    def splits(self) -> Splits:
        return self._splits

    def build_teacher(self) -> nn.Module:
        return self._task.build_teacher()

    def build_student(self, ratio: float) -> nn.Module:
        return self._task.build_student(ratio)


def _tensors(dataset: Any) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(dataset, TensorDataset):
        return dataset.tensors[0], dataset.tensors[1]
    return torch.stack([dataset[i][0] for i in range(len(dataset))]), labels_of(dataset)


def _with_state(model: nn.Module, state: dict[str, torch.Tensor]) -> nn.Module:
    copied = copy.deepcopy(model).cpu()
    copied.load_state_dict(state)
    return copied


def _source(split: Any, config: TrainConfig, device: torch.device) -> Any:
    from kdcore.data import BatchSource

    return BatchSource(split, config.batch_size * 4, device, config.num_workers)


def _no_autocast() -> Any:
    import contextlib

    return contextlib.nullcontext()
