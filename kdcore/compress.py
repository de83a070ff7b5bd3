"""Seed 002's compression of a trained student, as parts ``kdsweep compress`` chains: structured
pruning (Torch-Pruning), fake quantization for quantization-aware training (torchao's fake
quantizer), what the quantized student runs as, and the peak memory of a step. The training
between them is ``kdcore.train(..., build_model=...)``: the same KD loss on the same cached
teacher logits as the trial the student came from.

What runs in integers, on CPU (torchao 0.18):
- 8 bits: every nn.Linear runs torchao's int8 weight-only kernel (``quantize_int8``);
  convolutions keep their fake-quantized values in fp32 (simulated: torchao has no int8
  convolution on CPU).
- 4 bits: simulated throughout. Each weight holds one of 16 levels per output channel, stored
  and computed in fp32: the accuracy is that of a 4-bit model, the size and speed are not.
  ``packed_size_bytes`` says what a runtime storing 4-bit weights would hold.
"""

from __future__ import annotations

import copy
import os
import sys
import threading
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from kdcore.errors import ConfigError

BITS = (8, 4)
PRUNE_CRITERION = ("L2 norm of each channel's (or unit's) weights, summed over the layers that must lose it "
                   "together (Torch-Pruning's GroupMagnitudeImportance, p=2); the same share of every hidden "
                   "layer; the output layer is kept whole")
_RSS_EVERY_S = 0.005


def prune_channels(model: nn.Module, example: torch.Tensor, amount: float) -> nn.Module:
    """A copy of ``model`` with ``amount`` (0 < amount < 1) of the channels or units of every
    hidden layer removed, by ``PRUNE_CRITERION``: the layers get narrower, so the copy is smaller
    and faster, not merely sparse. ``example`` is a batch of inputs (for tracing the layers'
    dependencies). The last Linear or convolution in module order is the output and keeps its
    units."""
    if isinstance(amount, bool) or not isinstance(amount, (int, float)) or not 0 < amount < 1:
        raise ConfigError(f"prune amount {amount!r} is invalid (allowed: a share of channels strictly between 0 "
                          "and 1, e.g. 0.5)")
    import torch_pruning as tp

    pruned = copy.deepcopy(model).cpu().eval()
    layers = _weight_layers(pruned)
    if len(layers) < 2:
        raise ConfigError(f"{type(model).__name__} has {len(layers)} Linear or convolution layer(s): structured "
                          "pruning needs a hidden layer before the output layer")
    pruner = tp.pruner.MagnitudePruner(pruned, example.cpu(), importance=tp.importance.GroupMagnitudeImportance(p=2),
                                       pruning_ratio=float(amount), ignored_layers=[layers[-1]])
    pruner.step()
    return pruned


def structure_of(model: nn.Module) -> dict[str, dict[str, Any]]:
    """Each module's shape settings (in/out features, channels, kernel sizes: the int settings):
    with its weights, what rebuilds a pruned student from a fresh one (``rebuild``).
    Torch-Pruning's own ``state_dict`` pickles whole modules, which ``torch.load(weights_only=True)``
    rightly refuses; these are plain ints."""
    def shape_setting(value: Any) -> bool:
        return (isinstance(value, int) and not isinstance(value, bool)) or (
            isinstance(value, tuple) and all(isinstance(v, int) and not isinstance(v, bool) for v in value))

    return {name: {key: value for key, value in vars(module).items() if not key.startswith("_") and shape_setting(value)}
            for name, module in model.named_modules()}


def rebuild(model: nn.Module, structure: dict[str, dict[str, Any]], state_dict: dict[str, torch.Tensor]) -> nn.Module:
    """``model`` (a fresh ``build_student`` of the same ratio) reshaped to ``structure`` and loaded
    with ``state_dict``: the inverse of saving ``structure_of(pruned)`` and ``pruned.state_dict()``."""
    for name, module in model.named_modules():
        for key, value in structure.get(name, {}).items():
            setattr(module, key, value)
    for key, tensor in state_dict.items():
        owner, _, attr = key.rpartition(".")
        module = model.get_submodule(owner)
        current = getattr(module, attr, None)
        if isinstance(current, torch.Tensor) and current.shape != tensor.shape:
            empty = torch.empty_like(tensor, device=current.device)
            setattr(module, attr, nn.Parameter(empty) if isinstance(current, nn.Parameter) else empty)
    model.load_state_dict(state_dict)
    return model


class _FakeQuantized(nn.Module):
    """A weight seen through torchao's fake quantizer: symmetric, one scale per output channel,
    ``bits`` wide; gradients pass straight through the rounding."""

    def __init__(self, bits: int) -> None:
        super().__init__()
        from kdcore.cost import _torchao

        _torchao()  # torchao's first import, with its CPU-only warnings silenced
        from torchao.quantization.qat import IntxFakeQuantizeConfig, IntxFakeQuantizer

        dtype = {8: torch.int8, 4: torch.int4}[bits]
        self.quantizer = IntxFakeQuantizer(IntxFakeQuantizeConfig(dtype, granularity="per_channel", is_symmetric=True))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        # The quantizer takes (out, in) matrices: a convolution's (out, in, k) weight is one row per output channel.
        return self.quantizer(weight.reshape(weight.shape[0], -1)).reshape(weight.shape)


def fake_quantize(model: nn.Module, bits: int) -> nn.Module:
    """``model`` itself, every Linear and convolution weight now fake-quantized to ``bits`` (8 or
    4) in the forward pass, for quantization-aware training. torchao's ``QATConfig`` swaps nn.Linear
    only; its fake quantizer is applied here through ``torch.nn.utils.parametrize``, so
    convolutions train against their quantization error too. ``bake`` ends it."""
    _check_bits(bits)
    for layer in _weight_layers(model):
        parametrize.register_parametrization(layer, "weight", _FakeQuantized(bits))
    return model


def bake(model: nn.Module) -> nn.Module:
    """``model`` itself with the fake quantizers removed and each weight left at its quantized
    value: on the ``bits`` grid, stored in fp32. A plain module again (its state_dict has plain keys)."""
    for layer in _weight_layers(model):
        if parametrize.is_parametrized(layer, "weight"):
            parametrize.remove_parametrizations(layer, "weight", leave_parametrized=True)
    return model


def deployable(model: nn.Module, bits: int) -> tuple[nn.Module, str]:
    """What a baked student runs as on CPU, and how (the module docstring): a copy."""
    _check_bits(bits)
    if bits == 8:
        from kdcore.cost import quantize_int8

        quantized = quantize_int8(model)
        convs = any(isinstance(layer, nn.modules.conv._ConvNd) for layer in _weight_layers(model))
        return quantized.model, quantized.method + ("; convolutions simulated (int8 values in fp32)" if convs else "")
    return copy.deepcopy(model).cpu().eval(), "simulated: 4-bit values per output channel, stored and computed in fp32"


def packed_size_bytes(model: nn.Module, bits: int) -> int:
    """The bytes a runtime storing ``bits``-bit weights would hold: the Linear and convolution
    weights at ``bits`` each plus one fp32 scale per output channel, everything else in fp32."""
    _check_bits(bits)
    weights = {id(layer.weight) for layer in _weight_layers(model)}
    total = 0
    for layer in _weight_layers(model):
        total += (layer.weight.numel() * bits + 7) // 8 + 4 * layer.weight.shape[0]
    total += sum(4 * p.numel() for p in model.parameters() if id(p) not in weights)
    total += sum(4 * b.numel() for b in model.buffers())
    return total


class PeakMemory:
    """The peak memory while the ``with`` block runs, in bytes (``peak_bytes``), what it was when
    the block started (``start_bytes``) and what was measured (``kind``): CUDA's
    ``max_memory_allocated`` on ``device`` when it is a GPU; otherwise the process's resident set
    size, sampled every 5 ms from /proc (torch's CPU tensors are not Python objects, so
    tracemalloc would not see them; the RSS includes the interpreter and its libraries, hence
    ``start_bytes``). Without /proc (macOS), the process's lifetime peak RSS from ``getrusage``,
    which may predate the block (kind says so); on Windows, nothing (kind "unavailable", 0 bytes)."""

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self.peak_bytes = self.start_bytes = 0
        self.kind = ""
        self._done = threading.Event()
        self._sampler: threading.Thread | None = None

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self.kind = "cuda_max_allocated"
            self.start_bytes = torch.cuda.memory_allocated(self.device)
        elif os.path.exists("/proc/self/statm"):
            self.kind = "rss"
            self.peak_bytes = self.start_bytes = _rss_bytes()
            self._sampler = threading.Thread(target=self._sample, name="kdcore-peak-memory", daemon=True)
            self._sampler.start()
        else:
            self.kind = "rss_lifetime_peak" if sys.platform != "win32" else "unavailable"
        return self

    def _sample(self) -> None:
        while not self._done.wait(_RSS_EVERY_S):
            self.peak_bytes = max(self.peak_bytes, _rss_bytes())

    def __exit__(self, *exc_info: object) -> None:
        if self.kind == "cuda_max_allocated":
            self.peak_bytes = torch.cuda.max_memory_allocated(self.device)
        elif self._sampler is not None:
            self._done.set()
            self._sampler.join()
            self.peak_bytes = max(self.peak_bytes, _rss_bytes())
        elif self.kind == "rss_lifetime_peak":  # ru_maxrss is in KiB on Linux, bytes on macOS
            import resource

            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            self.peak_bytes = peak if sys.platform == "darwin" else peak * 1024


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _weight_layers(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd))]


def _check_bits(bits: int) -> None:
    if bits not in BITS:
        raise ConfigError(f"bits={bits!r} is invalid (allowed: {' or '.join(map(str, BITS))})")
