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


def _stop_at_epoch(epoch_to_stop: int, deadline: float):
    """An on_epoch hook that lets the deadline pass at ``epoch_to_stop`` (as a busy machine would)."""
    import time

    def hook(epoch) -> None:
        if epoch.epoch == epoch_to_stop:
            time.sleep(max(0.0, deadline - time.time()) + 0.01)

    return hook


def test_a_teacher_cut_by_the_deadline_resumes_where_it_stopped_and_ends_as_if_never_cut(tmp_path, digits, teacher):
    import time

    from kdcore import OutOfTime
    from kdcore._files import load_safe

    store = tmp_path / "store"
    deadline = time.time() + 2.0
    with pytest.raises(OutOfTime, match="budget ended while training the teacher .* the same command resumes"):
        load_or_train_teacher(digits, store, device="cpu", deadline=deadline, on_epoch=_stop_at_epoch(3, deadline))
    partial = teacher_path(digits, store).with_name("teacher.partial.pt")
    saved = load_safe(partial)["state"]["epoch"]  # 3 unless the machine was slower than the 2 s
    assert not teacher_path(digits, store).exists()

    seen = []
    resumed = load_or_train_teacher(digits, store, device="cpu", on_epoch=lambda e: seen.append(e.epoch))

    assert seen[0] == saved + 1
    assert resumed.trained_now
    assert resumed.digest == teacher.digest  # the session's teacher trained in one go
    assert not partial.exists()


def test_teacher_progress_saved_for_other_settings_is_not_resumed(tmp_path, digits, teacher):
    import time

    from kdcore import OutOfTime

    store = tmp_path / "store"
    deadline = time.time() + 1.0
    with pytest.raises(OutOfTime):
        load_or_train_teacher(digits, store, device="cpu", deadline=deadline, on_epoch=_stop_at_epoch(2, deadline))
    partial = teacher_path(digits, store).with_name("teacher.partial.pt")
    saved = torch.load(partial, weights_only=True)
    saved["config"]["lr"] *= 2
    torch.save(saved, partial)

    seen = []
    load_or_train_teacher(digits, store, device="cpu", on_epoch=lambda e: seen.append(e.epoch))

    assert seen[0] == 1


def test_a_run_whose_budget_ends_while_its_teacher_trains_exits_1_with_one_line_and_leaves_no_run(tmp_path):
    from _sweep_helpers import run_cli

    store = tmp_path / "store"
    run = run_cli("run", "--task", "digits", "--budget", "1s", "--store", str(store), cwd=tmp_path)

    assert run.returncode == 1, run.explain()
    errors = [line for line in run.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "the budget ended while training the teacher of task 'digits'" in errors[0]
    assert "the same command resumes" in errors[0]
    assert not (store / "mlflow.db").exists() and not (store / "optuna.journal").exists()
