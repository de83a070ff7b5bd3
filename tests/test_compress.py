"""kdcore.compress on the built-in students: structured pruning, the weights_only round trip of a
pruned student, quantization-aware KD training at 8 and 4 bits, and peak memory."""

from __future__ import annotations

import contextlib
import io

import pytest
import torch
from torch import nn

from kdcore import ConfigError, TrainConfig, get_task, train
from kdcore.compress import (PeakMemory, bake, deployable, fake_quantize, packed_size_bytes, prune_channels, rebuild,
                             structure_of)
from kdcore.data import BatchSource
from kdcore.trainer import evaluate


def _example(task, n=8):
    return torch.stack([task.splits().train[i][0] for i in range(n)])


def _accuracy(model, task):
    return evaluate(model, BatchSource(task.splits().test, 256, torch.device("cpu")), contextlib.nullcontext)[1]


@pytest.fixture(scope="module")
def digits():
    """A trained digits student (ratio 0.5: 64 -> 128 -> 128 -> 10) and its test accuracy."""
    task = get_task("digits")
    config = TrainConfig(alpha=0.0, ratio=0.5, lr=3e-3, epochs=12, batch_size=64, patience=0)
    result = train(task, config)
    model = task.build_student(0.5)
    model.load_state_dict(result.state_dict)
    return task, config, model.eval(), result.test_acc


@pytest.mark.parametrize(("name", "amount"), [("digits", 0.5), ("mnist1d", 0.5), ("mnist1d", 0.25)])
def test_pruning_removes_that_share_of_every_hidden_layer_and_keeps_the_output(name, amount):
    task = get_task(name)
    model = task.build_student(0.5).eval()
    pruned = prune_channels(model, _example(task), amount)
    layers = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv1d))]
    kept = [m for m in pruned.modules() if isinstance(m, (nn.Linear, nn.Conv1d))]
    for before, after in zip(layers[:-1], kept[:-1]):
        width = before.weight.shape[0]
        assert after.weight.shape[0] == width - int(width * amount)  # whole channels gone, not zeroed
    assert kept[-1].weight.shape[0] == task.num_classes  # the output layer keeps its units
    assert pruned(_example(task)).shape == (8, task.num_classes)
    assert sum(p.numel() for p in pruned.parameters()) < (1 - amount * 0.9) * sum(p.numel() for p in model.parameters())
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in task.build_student(0.5).parameters())


def test_pruning_keeps_the_channels_with_the_largest_weights():
    task = get_task("digits")
    model = task.build_student(0.5).eval()
    with torch.no_grad():
        first = model.net[0]
        first.weight.mul_(0.01)
        first.weight[:5] *= 1000  # five units stand out by their L2 norm
    pruned = prune_channels(model, _example(task), 0.5)
    survivors = {tuple(row.tolist()) for row in pruned.net[0].weight}
    assert all(tuple(row.tolist()) in survivors for row in model.net[0].weight[:5])


def test_a_pruned_student_round_trips_through_weights_only_loading(digits):
    task, _, model, _ = digits
    pruned = prune_channels(model, _example(task), 0.5)
    buffer = io.BytesIO()
    torch.save({"structure": structure_of(pruned), "state_dict": pruned.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    rebuilt = rebuild(task.build_student(0.5), saved["structure"], saved["state_dict"]).eval()
    x = _example(task)
    assert torch.equal(rebuilt(x), pruned(x))


@pytest.mark.parametrize("bits", [8, 4])
def test_fake_quantization_puts_each_channel_on_a_grid_of_2_to_the_bits_levels(bits):
    task = get_task("mnist1d")
    model = fake_quantize(task.build_student(0.5), bits)
    model(_example(task)).sum().backward()  # gradients pass straight through the rounding
    conv = model.features[0]
    assert conv.parametrizations.weight.original.grad is not None
    bake(model)
    assert "features.0.weight" in model.state_dict()  # a plain module again
    for layer in (model.features[2], model.head):
        for row in layer.weight.detach().reshape(layer.weight.shape[0], -1):
            assert len(torch.unique(row)) <= 2 ** bits
    assert packed_size_bytes(model, bits) < sum(4 * p.numel() for p in model.parameters()) * (bits + 4) / 32


def test_qat_at_8_bits_round_trips_within_a_point_of_fp32(digits):
    """The stated tolerance (docs/pipelines.md): after KD fine-tuning at 8 bits and conversion to
    int8 Linear layers, test accuracy within 1 point of the fp32 student it started from."""
    task, config, model, fp32_acc = digits
    quantizing = fake_quantize(task.build_student(0.5), 8)
    quantizing.load_state_dict({k.replace(".weight", ".parametrizations.weight.original"): v
                                for k, v in model.state_dict().items()})
    teacher_free = config.model_copy(update={"epochs": 2, "lr": 3e-4})
    result = train(task, teacher_free, build_model=lambda: quantizing)
    quantizing.load_state_dict(result.state_dict)
    baked = bake(quantizing).eval()
    runs, how = deployable(baked, 8)
    assert "int8 weight-only" in how
    assert type(runs.net[0].weight).__name__ == "Int8Tensor"
    int8_acc = _accuracy(runs, task)
    assert abs(int8_acc - fp32_acc) <= 0.01, (int8_acc, fp32_acc)
    assert abs(int8_acc - _accuracy(baked, task)) <= 0.005  # conversion of baked weights loses next to nothing


def test_4_bits_is_simulated_and_says_so(digits):
    task, _, model, _ = digits
    runs, how = deployable(bake(fake_quantize(task.build_student(0.5), 4)), 4)
    assert how.startswith("simulated") and runs.net[0].weight.dtype == torch.float32


def test_peak_memory_sees_torch_tensors_allocated_in_the_block():
    with PeakMemory("cpu") as busy:
        big = torch.ones(64 * 2**20 // 4)  # 64 MiB, still held when the block ends (no race with the sampler)
        big += 1
    del big
    assert busy.kind == "rss"
    assert busy.peak_bytes >= busy.start_bytes + 48 * 2**20


@pytest.mark.parametrize(("call", "message"), [
    (lambda: prune_channels(nn.Linear(4, 2), torch.zeros(1, 4), 0.5), "needs a hidden layer"),
    (lambda: prune_channels(get_task("digits").build_student(0.5), torch.zeros(1, 64), 1.0), "prune amount 1.0"),
    (lambda: fake_quantize(nn.Linear(4, 2), 3), "bits=3 is invalid (allowed: 8 or 4)"),
])
def test_bad_settings_name_the_value_and_what_is_allowed(call, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        call()
