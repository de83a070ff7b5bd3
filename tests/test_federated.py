"""Seed 004's federated stage in kdcore: shards dealt out IID or label-skewed, FedAvg weighing each
client by its shard size, and rounds of local KD training that resume where they were cut."""

from __future__ import annotations

import pytest
import torch

from kdcore import ConfigError, make_config, train
from kdcore.data import labels_of
from kdcore.federated import fed_avg, federate, partition


def _labels(counts: list[int]) -> torch.Tensor:
    return torch.cat([torch.full((n,), c) for c, n in enumerate(counts)])


def test_an_iid_partition_deals_every_item_once_in_equal_shares():
    labels = _labels([30, 30, 41])
    shards = partition(labels, 4, "iid", seed=1)
    assert sorted(torch.cat(shards).tolist()) == list(range(len(labels)))
    assert max(map(len, shards)) - min(map(len, shards)) <= 1


def _skew(shards: list[torch.Tensor], labels: torch.Tensor) -> float:
    """Mean over clients of the share of their items in their most common class."""
    return sum(labels[s].bincount().max().item() / len(s) for s in shards) / len(shards)


def test_a_dirichlet_partition_skews_labels_the_more_the_smaller_its_alpha():
    labels = _labels([100] * 10)
    skewed, mild = partition(labels, 5, "dirichlet:0.1", seed=0), partition(labels, 5, "dirichlet:100", seed=0)
    for shards in (skewed, mild):
        assert sorted(torch.cat(shards).tolist()) == list(range(len(labels)))
        assert all(len(s) > 0 for s in shards)
    assert _skew(skewed, labels) > 0.35 > 0.15 > _skew(mild, labels)  # IID here: 0.13
    assert [s.tolist() for s in partition(labels, 5, "dirichlet:0.1", seed=0)] == [s.tolist() for s in skewed]


@pytest.mark.parametrize("scheme", ["dirichlet", "dirichlet:0", "dirichlet:-1", "dirichlet:x", "skewed"])
def test_a_bad_partition_names_itself_and_what_is_allowed(scheme):
    with pytest.raises(ConfigError, match=f"partition '{scheme}' is not allowed: use iid, or dirichlet:A"):
        partition(_labels([5, 5]), 2, scheme)


def test_fed_avg_weighs_each_client_by_its_shard_size():
    a = {"w": torch.tensor([1.0, 2.0]), "n": torch.tensor(7)}
    b = {"w": torch.tensor([5.0, 10.0]), "n": torch.tensor(9)}
    averaged = fed_avg([a, b], [100, 300])  # by hand: 0.25 * a + 0.75 * b
    assert averaged["w"].tolist() == [4.0, 8.0]
    assert averaged["n"].item() == 7  # a counter is not averaged


@pytest.fixture(scope="module")
def start(digits, teacher_logits):
    """A distilled student, short of converged, and its validation accuracy."""
    config = make_config(epochs=3, ratio=0.25, alpha=0.7, temperature=4.0, device="cpu")
    result = train(digits, config, teacher=teacher_logits)
    model = digits.build_student(0.25)
    model.load_state_dict(result.state_dict)
    return model, config, result.best_val_acc


def test_rounds_of_local_kd_training_improve_the_global_student(digits, teacher_logits, start):
    model, config, start_val = start
    shards = partition(labels_of(digits.splits().train), 3, "iid", seed=0)
    result = federate(digits, model, teacher_logits, config, shards=shards, rounds=2)
    assert [r.round for r in result.history] == [1, 2]
    assert all(len(r.client_val_acc) == 3 and r.client_sizes == [len(s) for s in shards] for r in result.history)
    assert result.history[-1].val_acc > start_val + 0.05
    assert 0 < result.test_acc <= 1


def test_an_interrupted_run_resumes_after_its_last_round_as_if_never_cut(digits, teacher_logits, start):
    model, config, _ = start
    shards = partition(labels_of(digits.splits().train), 3, "dirichlet:0.5", seed=0)
    checkpoints = []
    whole = federate(digits, model, teacher_logits, config, shards=shards, rounds=2,
                     on_round=lambda result, checkpoint: checkpoints.append(checkpoint))
    trained = []
    resumed = federate(digits, model, teacher_logits, config, shards=shards, rounds=2, resume=checkpoints[0],
                       on_round=lambda result, checkpoint: trained.append(result.round))
    assert trained == [2] and [r.round for r in resumed.history] == [1, 2]
    assert resumed.history[0] == whole.history[0]  # carried over, not re-run
    for name, value in whole.state_dict.items():
        assert torch.equal(value, resumed.state_dict[name]), name


def test_an_embedding_task_is_refused_before_any_round(start, teacher_logits):
    from kdcore import get_task

    model, config, _ = start
    with pytest.raises(ConfigError, match="federated rounds support classification tasks only"):
        federate(get_task("mnist1d-retrieval"), model, teacher_logits, config, shards=[torch.arange(4)], rounds=1)
