"""kdcore.task_data: a task's generated data is made once per store, checksummed, and read back by
later processes; a damaged file is made again, never used."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest
import torch

from kdcore.task_data import TaskDataCache, file_name


class Builder:
    """A ``build`` that counts its calls."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> dict[str, torch.Tensor]:
        self.calls += 1
        generator = torch.Generator().manual_seed(0)
        return {"x": torch.randn(50, 4, generator=generator), "y": torch.arange(50) % 3}


def test_data_is_built_once_and_a_later_process_reads_it_from_the_folder(tmp_path):
    build = Builder()
    first = TaskDataCache()
    first.use(tmp_path)
    made = first.get("toy-v1", build)
    first.save()

    later = TaskDataCache()  # another process: nothing in memory
    later.use(tmp_path)
    read = later.get("toy-v1", build)

    assert build.calls == 1
    assert all(torch.equal(made[name], read[name]) for name in made)


def test_nothing_is_written_until_save(tmp_path):
    cache = TaskDataCache()
    cache.use(tmp_path / "data")
    cache.get("toy-v1", Builder())

    assert not (tmp_path / "data").exists()
    assert cache.save() == [tmp_path / "data" / file_name("toy-v1")]
    assert cache.save() == []  # already there


def test_one_process_builds_once_whatever_the_folder(tmp_path):
    build = Builder()
    cache = TaskDataCache()
    for folder in (tmp_path / "a", tmp_path / "b"):
        cache.use(folder)
        cache.get("toy-v1", build)
        cache.save()

    assert build.calls == 1
    assert (tmp_path / "b" / file_name("toy-v1")).exists()  # each store gets its copy


def _truncate(path):
    path.write_bytes(path.read_bytes()[:100])


def _change_a_value(path):
    saved = torch.load(path, weights_only=True)
    saved["tensors"]["x"][0, 0] += 1.0
    torch.save(saved, path)  # its checksum still describes the old value


def _other_key(path):
    saved = torch.load(path, weights_only=True)
    saved["key"] = "toy-v2"
    torch.save(saved, path)


@pytest.mark.parametrize("damage", [_truncate, _change_a_value, _other_key], ids=lambda d: d.__name__.strip("_"))
def test_a_damaged_file_is_made_again_and_rewritten_never_used(tmp_path, damage, caplog):
    build = Builder()
    first = TaskDataCache()
    first.use(tmp_path)
    good = first.get("toy-v1", build)
    first.save()
    damage(tmp_path / file_name("toy-v1"))

    later = TaskDataCache()
    later.use(tmp_path)
    with caplog.at_level(logging.WARNING, logger="kdsweep"):
        read = later.get("toy-v1", build)
    later.save()

    assert build.calls == 2
    assert "making it again" in caplog.text
    assert torch.equal(read["x"], good["x"])
    again = TaskDataCache()
    again.use(tmp_path)
    again.get("toy-v1", build)
    assert build.calls == 2  # the rewritten file is sound


def test_a_key_names_a_file_inside_the_folder():
    name = file_name("../../etc/passwd\0 and more")

    assert "/" not in name and "\0" not in name and not name.startswith(".")
    assert file_name("a") != file_name("a ")  # the hash keeps near-identical keys apart


def test_mnist1d_data_is_read_from_the_store_without_generating_it(tmp_path):
    # Made here once (a few seconds); then a fresh process whose generator is broken reads it back.
    from kdcore.data import fingerprint
    from kdcore.task_data import TASK_DATA
    from kdcore.tasks.mnist1d import MNIST1DTask

    TASK_DATA.use(tmp_path)
    made = MNIST1DTask().splits()
    TASK_DATA.save()
    TASK_DATA.use(None)
    script = (
        "import mnist1d.data, sys\n"
        "def broken(*a, **k): raise SystemExit('make_dataset was called')\n"
        "mnist1d.data.make_dataset = broken\n"
        "from pathlib import Path\n"
        "from kdcore.data import fingerprint\n"
        "from kdcore.task_data import TASK_DATA\n"
        "from kdcore.tasks.mnist1d import MNIST1DTask\n"
        f"TASK_DATA.use(Path({str(tmp_path)!r}))\n"
        "s = MNIST1DTask().splits()\n"
        "print(' '.join(fingerprint(getattr(s, k)) for k in ('train', 'val', 'test', 'unlabeled')))\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)

    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [fingerprint(getattr(made, k)) for k in ("train", "val", "test", "unlabeled")]
