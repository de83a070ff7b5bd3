"""kdcore.teacher_outputs: the teacher-logit cache, its hits, and rebuilding damaged files."""

from __future__ import annotations

import copy
import logging

import pytest
import torch
from torch import nn

from kdcore import CacheError, cache_key, teacher_outputs
from kdcore._files import state_digest, tensor_digest

SPLITS = ("train", "val", "test")


@pytest.fixture
def cache_root(tmp_path):
    return tmp_path / "cache"


@pytest.fixture
def built(digits, teacher, cache_root):
    """A freshly built (miss) cache entry for the session's teacher."""
    outputs = teacher_outputs(digits, teacher.model, teacher.digest, cache_root, device="cpu")
    assert not outputs.hit
    return outputs


def _same_logits(a, b) -> bool:
    return all(torch.equal(getattr(a, split), getattr(b, split)) for split in SPLITS)


def test_first_call_misses_then_second_call_hits(digits, teacher, built, cache_root):
    again = teacher_outputs(digits, teacher.model, teacher.digest, cache_root, device="cpu")

    assert again.hit
    assert again.path == built.path
    assert built.path.exists()
    assert _same_logits(again.logits, built.logits)


def test_cached_logits_equal_a_live_teacher_forward(digits, teacher, built):
    splits = digits.splits()
    with torch.no_grad():
        for split in SPLITS:
            live = teacher.model.eval()(getattr(splits, split).tensors[0])
            assert torch.allclose(getattr(built.logits, split), live, rtol=1e-5, atol=1e-5), split


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _change_a_value_keep_checksum(path):
    saved = torch.load(path, weights_only=True)
    saved["train"][0, 0] += 1.0
    torch.save(saved, path)  # "sha256" still describes the old values


def _other_key(path):
    saved = torch.load(path, weights_only=True)
    saved["key"] = "0" * 24
    torch.save(saved, path)


def _wrong_shape_with_valid_checksum(path):
    saved = torch.load(path, weights_only=True)
    saved["train"] = saved["train"][:-1].clone()
    saved["sha256"]["train"] = tensor_digest(saved["train"])
    torch.save(saved, path)


def _not_a_mapping(path):
    torch.save(torch.zeros(3), path)


def _no_checksums(path):
    saved = torch.load(path, weights_only=True)
    del saved["sha256"]
    torch.save(saved, path)


@pytest.mark.parametrize("damage", [_truncate, _change_a_value_keep_checksum, _other_key,
                                    _wrong_shape_with_valid_checksum, _not_a_mapping, _no_checksums],
                         ids=lambda damage: damage.__name__.strip("_"))
def test_damaged_cache_file_is_rebuilt(digits, teacher, built, cache_root, damage, caplog):
    damage(built.path)

    with caplog.at_level(logging.WARNING, logger="kdsweep"):
        rebuilt = teacher_outputs(digits, teacher.model, teacher.digest, cache_root, device="cpu")

    assert not rebuilt.hit
    assert _same_logits(rebuilt.logits, built.logits)
    assert "rebuilding" in caplog.text
    # The rebuilt file is sound again: the next call hits.
    assert teacher_outputs(digits, teacher.model, teacher.digest, cache_root, device="cpu").hit


def test_different_teacher_weights_give_a_different_key(digits, teacher):
    other = digits.build_teacher()
    other_digest = state_digest(other.state_dict())

    assert other_digest != teacher.digest
    assert cache_key(digits, other_digest) != cache_key(digits, teacher.digest)


def test_different_teacher_gets_its_own_cache_entry(digits, teacher, built, cache_root):
    torch.manual_seed(123)
    other = digits.build_teacher()

    outputs = teacher_outputs(digits, other, state_digest(other.state_dict()), cache_root, device="cpu")

    assert not outputs.hit
    assert outputs.path != built.path
    assert not torch.allclose(outputs.logits.train, built.logits.train)


class _NoisyTeacher(nn.Module):
    """A teacher whose output is random even in eval mode."""

    def __init__(self, base: nn.Module) -> None:
        super().__init__()
        self.base = base

    def forward(self, x):
        return self.base(x) + torch.randn(x.shape[0], 10)


def test_teacher_random_in_eval_mode_raises_cache_error(digits, teacher, cache_root):
    noisy = _NoisyTeacher(teacher.model)

    with pytest.raises(CacheError, match="deterministic"):
        teacher_outputs(digits, noisy, "noisy-teacher", cache_root, device="cpu")


def test_a_cache_that_fails_its_spot_check_leaves_nothing_behind(digits, teacher, cache_root):
    with pytest.raises(CacheError):
        teacher_outputs(digits, _NoisyTeacher(teacher.model), "noisy-teacher", cache_root, device="cpu")

    assert not cache_root.exists() or not any(cache_root.rglob("*"))


def test_a_rejected_cache_is_rejected_again_on_the_next_call(digits, teacher, cache_root):
    # The old cache saved the file before its spot check, so the second call trusted it.
    noisy = _NoisyTeacher(teacher.model)
    for _ in range(2):
        with pytest.raises(CacheError, match="deterministic"):
            teacher_outputs(digits, noisy, "noisy-teacher", cache_root, device="cpu")


def _consistent_but_wrong(path):
    """Other logits with checksums that match them: only a comparison with the teacher can tell."""
    saved = torch.load(path, weights_only=True)
    saved["train"] = saved["train"] + 1.0
    saved["sha256"]["train"] = tensor_digest(saved["train"])
    torch.save(saved, path)


def test_a_cache_hit_is_spot_checked_against_the_teacher_before_use(digits, teacher, built, cache_root, caplog):
    _consistent_but_wrong(built.path)

    with caplog.at_level(logging.WARNING, logger="kdsweep"):
        again = teacher_outputs(digits, teacher.model, teacher.digest, cache_root, device="cpu")

    assert not again.hit
    assert "fresh teacher forward" in caplog.text
    assert _same_logits(again.logits, built.logits)


def test_teacher_logits_with_nan_are_refused_before_anything_is_cached(digits, teacher, cache_root):
    broken = copy.deepcopy(teacher.model)
    with torch.no_grad():
        next(broken.parameters()).fill_(float("nan"))

    with pytest.raises(CacheError, match="NaN or \\+inf"):
        teacher_outputs(digits, broken, "nan-teacher", cache_root, device="cpu")
    assert not any(cache_root.rglob("logits.pt"))
