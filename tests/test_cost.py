"""kdcore.cost: what a deployed student costs (FLOPs, bytes, latency) and its INT8 copy, on real models."""

from __future__ import annotations

import contextlib
import io

import pytest
import torch
from torch import nn

import kdcore
from kdcore.data import BatchSource
from kdcore.trainer import evaluate


@pytest.fixture(scope="module")
def trained_student(digits) -> nn.Module:
    """A digits student at ratio 0.5 trained for a few epochs (about a second), left in train mode."""
    config = kdcore.TrainConfig(alpha=0.0, ratio=0.5, epochs=8, batch_size=64, patience=0, device="cpu")
    result = kdcore.train(digits, config, teacher=None)
    model = digits.build_student(0.5)
    model.load_state_dict(result.state_dict)
    return model.train()


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


def _same_weights(model: nn.Module, snapshot: dict[str, torch.Tensor]) -> bool:
    state = model.state_dict()
    return state.keys() == snapshot.keys() and all(
        type(state[name]) is torch.Tensor and torch.equal(state[name], snapshot[name]) for name in snapshot)


def test_flops_of_a_linear_layer_are_two_per_multiply_add():
    cost = kdcore.architecture_cost(nn.Linear(20, 10), torch.randn(20))
    assert cost.flops == 2 * 20 * 10


def test_flops_of_a_conv1d_layer_match_the_count_by_hand():
    # 9 samples, kernel 3, stride 2, padding 1: 5 outputs per channel, each 2 in-channels x 3 taps.
    conv = nn.Conv1d(2, 4, kernel_size=3, stride=2, padding=1)
    cost = kdcore.architecture_cost(conv, torch.randn(2, 9))
    assert cost.flops == 2 * (4 * 5) * (2 * 3)


def test_params_and_bytes_are_count_parameters(trained_student):
    cost = kdcore.architecture_cost(trained_student, torch.randn(64))
    assert (cost.params, cost.size_bytes) == kdcore.count_parameters(trained_student)


def test_architecture_key_is_equal_for_one_ratio_and_differs_otherwise(digits):
    torch.manual_seed(1)
    first = digits.build_student(0.5)
    torch.manual_seed(2)
    second = digits.build_student(0.5)
    assert not torch.equal(first.net[0].weight, second.net[0].weight)
    assert kdcore.architecture_key(first) == kdcore.architecture_key(second)
    assert kdcore.architecture_key(first) != kdcore.architecture_key(digits.build_student(0.25))
    assert kdcore.architecture_key(first) != kdcore.architecture_key(digits.build_student(0.5).double())


def test_architecture_key_sees_layer_settings_that_shapes_do_not():
    same_weights = [nn.Conv1d(1, 4, kernel_size=3, stride=stride) for stride in (1, 2)]
    assert kdcore.architecture_key(same_weights[0]) != kdcore.architecture_key(same_weights[1])


def test_latencies_are_positive_grow_with_batch_and_restore_the_callers_threads(trained_student):
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        cost = kdcore.architecture_cost(trained_student, torch.randn(64), threads=1)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    assert cost.threads == 1
    assert 0 < cost.latency_ms_b1 < cost.latency_ms_b256


def test_bad_threads_are_refused():
    with pytest.raises(kdcore.ConfigError, match="threads=0"):
        kdcore.architecture_cost(nn.Linear(4, 2), torch.randn(4), threads=0)


def test_a_sample_with_the_wrong_shape_says_what_to_pass():
    with pytest.raises(ValueError, match=r"batch of shape \(1, 3\).*without its batch dimension"):
        kdcore.architecture_cost(nn.Linear(4, 2), torch.randn(3))


def test_the_callers_model_is_left_alone(trained_student):
    weights = _snapshot(trained_student)
    kdcore.architecture_cost(trained_student, torch.randn(64))
    kdcore.quantize_int8(trained_student)
    assert trained_student.training
    assert all(p.device.type == "cpu" and type(p) is nn.Parameter for p in trained_student.parameters())
    assert _same_weights(trained_student, weights)


def test_int8_student_is_smaller_and_as_accurate(digits, trained_student):
    splits = digits.splits()
    cpu = torch.device("cpu")
    _, fp32_val_acc = evaluate(trained_student, BatchSource(splits.val, 256, cpu), contextlib.nullcontext)
    trained_student.train()  # evaluate switched it to eval mode; the fixture hands it out in train mode

    student = kdcore.quantize_int8(trained_student)
    metrics = kdcore.int8_metrics(student, splits.val, splits.test, splits.train[0][0])

    assert student.layers == ("net.0", "net.2", "net.4")
    assert "int8 weight-only" in student.method
    _, fp32_bytes = kdcore.count_parameters(trained_student)
    assert student.size_bytes < fp32_bytes / 2
    assert metrics["int8_size_bytes"] == student.size_bytes
    assert abs(metrics["int8_val_acc"] - fp32_val_acc) <= 0.05
    assert metrics["int8_test_acc"] > 0.8
    assert metrics["int8_latency_ms_b1"] > 0


def test_int8_weights_reload_into_a_fresh_quantized_student(digits, trained_student):
    student = kdcore.quantize_int8(trained_student)
    buffer = io.BytesIO()
    torch.save(student.model.state_dict(), buffer)
    buffer.seek(0)
    fresh = kdcore.quantize_int8(digits.build_student(0.5)).model
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    x = digits.splits().val.tensors[0][:32]
    with torch.inference_mode():
        assert torch.equal(fresh(x), student.model(x))


def test_convolutions_stay_fp32_and_only_the_linear_head_is_quantized():
    student = kdcore.quantize_int8(kdcore.get_task("mnist1d").build_student(0.5))
    assert student.layers == ("head",)
    assert "other layers stay fp32" in student.method


@pytest.mark.parametrize("model", [nn.Sequential(nn.Flatten(), nn.ReLU()), nn.Conv1d(1, 4, kernel_size=3)],
                         ids=["no-layers", "conv-only"])
def test_a_model_without_a_quantizable_layer_says_so(model):
    student = kdcore.quantize_int8(model)
    assert student.layers == ()
    assert student.method.startswith("none:")
