"""Preflight: a task that breaks the contract is named in one line before anything is written."""

from __future__ import annotations

import time

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset
from typer.testing import CliRunner

import kdcore
from cli.main import app
from kdcore.tasks.models import MLP, scaled_width

TASK_MODULE = '''
import torch
from torch.utils.data import TensorDataset
import kdcore
from kdcore.tasks.models import MLP, scaled_width


class NineHeads(kdcore.Task):
    name = "nine-heads"
    num_classes = 10

    def splits(self):
        torch.manual_seed(0)
        make = lambda n: TensorDataset(torch.randn(n, 8), torch.arange(n) % 10)
        return kdcore.Splits(make(40), make(20), make(20))

    def build_teacher(self):
        return MLP(8, 16, 10)

    def build_student(self, ratio):
        return MLP(8, scaled_width(16, ratio), 9)


def make_task():
    return NineHeads()
'''


class Tabular(kdcore.Task):
    """A valid tiny task; each test breaks one thing in a subclass."""

    name = "tabular"
    num_classes = 3

    def __init__(self) -> None:
        self.teachers_built = 0
        generator = torch.Generator().manual_seed(0)
        x = torch.randn(30, 5, generator=generator)
        self._splits = kdcore.Splits(*(TensorDataset(x, torch.arange(30) % 3) for _ in range(3)))

    def splits(self) -> kdcore.Splits:
        return self._splits

    def build_teacher(self) -> nn.Module:
        self.teachers_built += 1
        return MLP(5, 16, self.num_classes)

    def build_student(self, ratio: float) -> nn.Module:
        return MLP(5, scaled_width(16, ratio), self.num_classes)


def problem(task: kdcore.Task, ratios=(0.05, 1.0)) -> str:
    with pytest.raises(kdcore.TaskError) as caught:
        kdcore.check_config(task, kdcore.TrainConfig(ratio=0.5), ratios=ratios)
    message = str(caught.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("name", ["digits", "mnist1d", "mnist1d-retrieval"])
def test_built_in_tasks_pass_preflight_in_under_half_a_second(name):
    task = kdcore.get_task(name)
    task.splits()  # built once per task object (and cached), as in a run

    started = time.perf_counter()
    kdcore.check_config(task, kdcore.TrainConfig(), ratios=[0.05, 1.0])

    assert time.perf_counter() - started < 0.5


def test_a_task_object_is_preflighted_once_and_each_new_ratio_once():
    task = Tabular()

    for _ in range(3):
        kdcore.check_config(task, kdcore.TrainConfig(ratio=0.5), ratios=[0.1, 1.0])
    kdcore.check_config(task, kdcore.TrainConfig(ratio=0.25))

    assert task.teachers_built == 1


def test_preflight_leaves_the_random_state_as_it_was():
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)

    kdcore.check_config(Tabular(), kdcore.TrainConfig())

    assert torch.equal(torch.rand(3), expected)


def test_a_student_head_of_the_wrong_width_is_named_with_its_ratio_and_shapes():
    class NineHeads(Tabular):
        def build_student(self, ratio):
            return MLP(5, scaled_width(16, ratio), 2)

    assert problem(NineHeads()) == ("task 'tabular': build_student(0.5) gives logits of shape (4, 2), "
                                    "expected (4, 3) (num_classes=3)")


def test_a_further_teacher_of_the_wrong_width_is_named_with_its_name_and_shapes():
    class Ensemble(Tabular):
        def teachers(self):
            return [*super().teachers(), kdcore.TeacherSpec("wide", lambda: MLP(5, 32, 4), self.teacher_config())]

    assert problem(Ensemble()) == ("task 'tabular': teachers()['wide'].build() gives logits of shape (4, 4), "
                                   "expected (4, 3) (num_classes=3)")


def test_teachers_with_the_same_name_are_refused():
    class Twins(Tabular):
        def teachers(self):
            return [*super().teachers(), kdcore.TeacherSpec("teacher", self.build_teacher, self.teacher_config())]

    assert "teachers() names ['teacher', 'teacher'] must be distinct" in problem(Twins())


def test_the_ends_of_the_ratio_range_are_built():
    class TinyBreaks(Tabular):
        def build_student(self, ratio):
            if ratio < 0.1:
                raise ValueError("width 0")
            return super().build_student(ratio)

    message = problem(TinyBreaks())

    assert message.startswith("task 'tabular': build_student(0.05) raised ValueError: width 0 "
                              "(at ")
    assert "test_preflight.py:" in message


def test_splits_returning_a_tuple_asks_for_kdcore_splits():
    class TupleSplits(Tabular):
        def splits(self):
            return tuple(super().splits().__dict__.values())[:3]

    assert problem(TupleSplits()) == ("task 'tabular': splits() returned tuple, expected "
                                      "kdcore.Splits(train, val, test, unlabeled=None)")


def test_labels_outside_the_classes_are_named_with_the_split():
    class BadLabels(Tabular):
        def splits(self):
            good = super().splits()
            x, y = good.val.tensors
            return kdcore.Splits(good.train, TensorDataset(x, y + 1), good.test)

    assert "splits().val labels include 3, outside [0, 3) (num_classes=3)" in problem(BadLabels())


def test_float_labels_ask_for_integer_class_indices():
    class FloatLabels(Tabular):
        def splits(self):
            x, y = super().splits().train.tensors
            data = TensorDataset(x, y.float())
            return kdcore.Splits(data, data, data)

    assert "splits().train labels are torch.float32, expected integer class indices" in problem(FloatLabels())


def test_an_empty_split_is_named():
    class EmptyTest(Tabular):
        def splits(self):
            good = super().splits()
            return kdcore.Splits(good.train, good.val, TensorDataset(torch.empty(0, 5), torch.empty(0).long()))

    assert problem(EmptyTest()) == "task 'tabular': splits().test is empty; every split needs at least one sample"


def test_weights_that_do_not_fit_the_teacher_are_named():
    class OldWeights(Tabular):
        def pretrained_teacher(self):
            return MLP(5, 8, self.num_classes).state_dict()

    message = problem(OldWeights())

    assert message.startswith("task 'tabular': pretrained_teacher() weights do not fit build_teacher() (size mismatch")


def test_a_missing_weights_file_names_the_method_and_the_line_that_raised_it(tmp_path):
    missing = tmp_path / "teacher.pt"

    class MissingWeights(Tabular):
        def pretrained_teacher(self):
            return torch.load(missing, weights_only=True)

    message = problem(MissingWeights())

    assert message.startswith("task 'tabular': pretrained_teacher() raised FileNotFoundError:")
    assert "test_preflight.py:" in message


def test_a_forward_that_fails_names_the_batch_and_the_users_line():
    class WrongInput(Tabular):
        def build_teacher(self):
            return MLP(6, 16, self.num_classes)

    message = problem(WrongInput())

    assert message.startswith("task 'tabular': build_teacher() forward on a batch of splits().train inputs "
                              "(shape (4, 5), torch.float32) raised RuntimeError: mat1 and mat2")


def test_a_factory_that_raises_is_one_line_naming_its_file_and_line(tmp_path, monkeypatch):
    (tmp_path / "raising_task.py").write_text("def make_task():\n    raise OSError('no data here')\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))

    with pytest.raises(kdcore.TaskError) as caught:
        kdcore.get_task("raising_task:make_task")

    assert str(caught.value).startswith("task 'raising_task:make_task': make_task() (the factory; it takes no "
                                        "arguments and returns a kdcore.Task) raised OSError: no data here "
                                        "(at raising_task.py:2)")


def test_kdsweep_train_with_a_broken_student_exits_2_in_one_line_and_writes_nothing(tmp_path, monkeypatch):
    (tmp_path / "nine_heads.py").write_text(TASK_MODULE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))  # as get_task would; the monkeypatch takes it off again
    store = tmp_path / "store"

    result = CliRunner().invoke(app, ["train", "--task", "nine_heads:make_task", "--epochs", "1",
                                      "--store", str(store)])

    assert result.exit_code == 2, result.output
    assert "task 'nine-heads': build_student(0.5) gives logits of shape (4, 9), expected (4, 10)" in result.output
    assert "Traceback" not in result.output
    assert not store.exists()


def test_the_ends_of_a_searched_ratio_range_reach_build_student():
    from sweeps.search.space import SearchSpace

    class TinyBreaks(Tabular):
        def build_student(self, ratio):
            return MLP(5, scaled_width(16, ratio), 2 if ratio < 0.1 else 3)

    space = SearchSpace.parse(None)  # ratio from 0.05 to 1
    with pytest.raises(kdcore.TaskError, match=r"build_student\(0.05\) gives logits of shape \(4, 2\)"):
        kdcore.check_config(TinyBreaks(), space.config(space.upper_ends()), ratios=space.grid(2).get("ratio", ()))


def test_kdsweep_run_with_a_broken_student_exits_2_in_one_line_and_writes_nothing(tmp_path, monkeypatch):
    (tmp_path / "nine_heads.py").write_text(TASK_MODULE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))  # as get_task would; the monkeypatch takes it off again
    store = tmp_path / "store"

    result = CliRunner().invoke(app, ["run", "--task", "nine_heads:make_task", "--n-trials", "1",
                                      "--store", str(store)])

    assert result.exit_code == 2, result.output
    assert result.output.startswith("error: task 'nine-heads': build_student(1) gives logits of shape (4, 9)")
    assert len(result.output.strip().splitlines()) == 1
    assert not store.exists()
