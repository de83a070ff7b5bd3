"""kdcore.load_or_train_teacher: train once, save in the store, load afterwards; never trust a bad file."""

from __future__ import annotations

import shutil

import pytest
import torch

from kdcore import load_or_train_teacher
from kdcore._files import state_digest
from kdcore.teacher import teacher_path


@pytest.fixture
def store(tmp_path, teacher_store):
    """A copy of the session store whose teacher file a test may damage."""
    root = tmp_path / "store"
    shutil.copytree(teacher_store, root)
    return root


def test_first_call_trains_and_saves_second_call_loads(tmp_path, digits):
    first = load_or_train_teacher(digits, tmp_path / "store", device="cpu")
    second = load_or_train_teacher(digits, tmp_path / "store", device="cpu")

    assert first.trained_now and first.path.exists()
    assert not second.trained_now
    assert second.path == first.path
    assert second.digest == first.digest
    assert second.test_acc == first.test_acc
    assert state_digest(second.model.state_dict()) == first.digest


def test_trained_teacher_is_accurate(teacher):
    assert teacher.test_acc > 0.9


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _garbage(path):
    path.write_bytes(b"this is not a torch checkpoint")


def _tampered_weights(path):
    saved = torch.load(path, weights_only=True)
    first = next(iter(saved["state_dict"]))
    saved["state_dict"][first] += 1.0  # "digest" still describes the old weights
    torch.save(saved, path)


def _wrong_architecture(path):
    saved = torch.load(path, weights_only=True)
    saved["state_dict"] = {"weight": torch.zeros(2, 2)}
    saved["digest"] = state_digest(saved["state_dict"])
    torch.save(saved, path)


@pytest.mark.parametrize("damage", [_truncate, _garbage, _tampered_weights, _wrong_architecture],
                         ids=lambda damage: damage.__name__.strip("_"))
def test_bad_teacher_file_is_retrained(store, digits, teacher, damage):
    path = teacher_path(digits, store)
    damage(path)

    retrained = load_or_train_teacher(digits, store, device="cpu")

    assert retrained.trained_now
    assert retrained.test_acc > 0.9
    # Training is seeded, so the retrained teacher is the session's teacher again, and saved.
    assert retrained.digest == teacher.digest
    assert not load_or_train_teacher(digits, store, device="cpu").trained_now


def test_store_files_are_readable_by_the_group(tmp_path):
    import os
    import stat

    from kdcore._files import save_atomic

    previous = os.umask(0o022)
    try:
        save_atomic({"weights": torch.zeros(2)}, tmp_path / "a" / "file.pt")
    finally:
        os.umask(previous)
    mode = stat.S_IMODE((tmp_path / "a" / "file.pt").stat().st_mode)
    assert mode == 0o644  # mkstemp would give 0600
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["file.pt"]  # no temporary file left behind
