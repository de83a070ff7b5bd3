"""Seed 003's distillation knobs: temperature/alpha schedules, several teachers in one KD target
(an ensemble), and the EMA-of-student (online) teacher; each in kdcore and searched by a sweep."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from _sweep_helpers import (
    check_sweep_invariants,
    copy_store,
    mlflow_client,
    run_cli,
    sweep_template,  # noqa: F401  (a fixture)
    write_sweep_file,
)

from kdcore import ConfigError, kd_loss, make_config, train
from kdcore.schedule import scheduled

SEED_003_T = [[0.33, 2.0], [0.33, 4.0], [0.34, 6.0]]
SEED_003_ALPHA = [[0.33, 0.7], [0.33, 0.5], [0.34, 0.3]]


# --- schedules ------------------------------------------------------------------------------

@pytest.mark.parametrize(("kind", "epoch", "expected"), [
    ("constant", 1, 2.0), ("constant", 10, 2.0),
    ("linear", 1, 2.0), ("linear", 4, 4.0), ("linear", 7, 6.0),  # 7 epochs: (e - 1) / 6 of the way
    ("cosine", 1, 2.0), ("cosine", 4, 4.0), ("cosine", 7, 6.0),
    ("cosine", 2, 6.0 - 4.0 * (1 + math.cos(math.pi / 6)) / 2),
])
def test_linear_and_cosine_go_from_start_to_end_over_the_epochs(kind, epoch, expected):
    assert scheduled(kind, 2.0, 6.0, None, epoch, 7) == pytest.approx(expected)


def test_seed_003_stages_split_ten_epochs_four_three_three():
    values = [scheduled("stages", 9.0, None, SEED_003_T, e, 10) for e in range(1, 11)]
    assert values == [2.0] * 4 + [4.0] * 3 + [6.0] * 3


def test_the_config_gives_each_epochs_temperature_and_alpha():
    config = make_config(epochs=10, temperature_schedule="stages", temperature_stages=SEED_003_T,
                         alpha_schedule="linear", alpha=0.7, alpha_end=0.3)
    assert config.kd_weights(1) == pytest.approx((2.0, 0.7))
    assert config.kd_weights(10) == pytest.approx((6.0, 0.3))
    assert config.kd_weights(5)[0] == 4.0


@pytest.mark.parametrize(("settings", "message"), [
    ({"temperature_schedule": "linear"}, "temperature_schedule='linear' needs temperature_end"),
    ({"alpha_schedule": "stages"}, "alpha_schedule='stages' needs alpha_stages"),
    ({"alpha_schedule": "stages", "alpha_stages": [[0.5, 0.7], [0.4, 0.3]]}, "sum to 1; these sum to 0.9"),
    ({"alpha_schedule": "stages", "alpha_stages": [[0.5, 0.7], [0.5, 1.3]]}, "values in [0, 1]"),
    ({"temperature_schedule": "step"}, "temperature_schedule='step' is invalid"),
    ({"alpha_schedule": "cosine", "alpha_end": 1.5}, "alpha_end=1.5 is out of range"),
])
def test_a_bad_schedule_is_one_line_naming_the_setting(settings, message):
    with pytest.raises(ConfigError) as error:
        make_config(**settings)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_each_epoch_logs_the_temperature_and_alpha_it_trained_with(digits, teacher_logits):
    config = make_config(epochs=4, patience=0, temperature=2.0, temperature_schedule="linear", temperature_end=5.0,
                         alpha_schedule="stages", alpha_stages=[[0.5, 0.9], [0.5, 0.2]], device="cpu")
    result = train(digits, config, teacher=teacher_logits)
    assert [h.temperature for h in result.history] == pytest.approx([2.0, 3.0, 4.0, 5.0])
    assert [h.alpha for h in result.history] == [0.9, 0.9, 0.2, 0.2]
    assert {"temperature", "alpha"} <= set(result.history[0].metrics())


def test_a_constant_schedule_trains_exactly_as_before(digits, teacher_logits):
    plain = make_config(epochs=2, alpha=0.6, temperature=3.0, seed=4, device="cpu")
    staged = make_config(epochs=2, alpha=0.6, temperature=3.0, seed=4, device="cpu", temperature_schedule="stages",
                         temperature_stages=[[1.0, 3.0]], alpha_schedule="linear", alpha_end=0.6)
    a, b = train(digits, plain, teacher=teacher_logits), train(digits, staged, teacher=teacher_logits)
    assert all(torch.equal(a.state_dict[k], b.state_dict[k]) for k in a.state_dict)


# --- several teachers in one target ---------------------------------------------------------

def _log_softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def test_two_teachers_give_the_weighted_mean_of_their_probabilities():
    student = torch.tensor([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]])
    t1, t2 = torch.tensor([[2.0, 1.0, 0.0], [0.5, 0.5, 2.0]]), torch.tensor([[0.0, 3.0, -1.0], [1.0, 0.0, 0.0]])
    temperature, weights = 2.5, [3.0, 1.0]
    loss = kd_loss(student, [t1, t2], torch.tensor([1, 2]), temperature=temperature, alpha=1.0,
                   teacher_weights=weights)
    # By hand in float64: q = 0.75 softmax(t1/T) + 0.25 softmax(t2/T); T^2 KL(q || softmax(s/T)).
    q = 0.75 * np.exp(_log_softmax(t1.numpy() / temperature)) + 0.25 * np.exp(_log_softmax(t2.numpy() / temperature))
    log_p = _log_softmax(student.numpy().astype(np.float64) / temperature)
    expected = (q * (np.log(q) - log_p)).sum(axis=1).mean() * temperature**2
    assert loss.kd.item() == pytest.approx(expected, rel=1e-5)


def test_one_teacher_in_a_list_is_that_teacher():
    student, teacher, labels = torch.randn(4, 5), torch.randn(4, 5), torch.tensor([0, 1, 2, 3])
    alone = kd_loss(student, teacher, labels, temperature=3.0, alpha=0.5)
    listed = kd_loss(student, [teacher], labels, temperature=3.0, alpha=0.5, teacher_weights=[7.0])
    assert torch.equal(alone.total, listed.total)


def test_teacher_weights_must_fit_the_teachers():
    with pytest.raises(ValueError, match="one weight >= 0 per teacher"):
        kd_loss(torch.randn(2, 3), [torch.randn(2, 3)] * 2, torch.tensor([0, 1]), temperature=2.0, alpha=1.0,
                teacher_weights=[1.0])


@pytest.fixture(scope="module")
def second_teacher(teacher_store, digits, tmp_path_factory):
    """The digits task's second teacher (the same MLP from seed 1), trained once, and its logits."""
    from kdcore import load_or_train_teacher, teacher_outputs

    spec = digits.teachers()[1]
    trained = load_or_train_teacher(digits, teacher_store, device="cpu", spec=spec)
    cache = tmp_path_factory.mktemp("second-cache")
    return trained, teacher_outputs(digits, trained.model, trained.digest, cache, device="cpu").logits


def test_a_second_teacher_is_trained_once_and_saved_apart_from_the_first(teacher_store, digits, teacher,
                                                                          second_teacher):
    from kdcore import load_or_train_teacher
    from kdcore.teacher import teacher_path

    trained, _ = second_teacher
    assert trained.name == "teacher-seed1" and trained.digest != teacher.digest
    assert trained.path == teacher_path(digits, teacher_store, "teacher-seed1") != teacher.path
    again = load_or_train_teacher(digits, teacher_store, device="cpu", spec=digits.teachers()[1])
    assert not again.trained_now and again.digest == trained.digest


def test_training_on_two_teachers_distils_their_mean_not_either_one(digits, teacher_logits, second_teacher):
    _, second = second_teacher
    one = make_config(epochs=2, alpha=0.8, seed=2, device="cpu")
    two = one.model_copy(update={"teachers": 2})
    alone = train(digits, one, teacher=[teacher_logits, second])  # teachers=1: the first of the list
    assert torch.equal(alone.state_dict["net.0.weight"],
                       train(digits, one, teacher=teacher_logits).state_dict["net.0.weight"])
    both = train(digits, two, teacher=[teacher_logits, second])
    swapped = train(digits, two, teacher=[second, teacher_logits])  # equal weights: the order does not matter
    assert not torch.equal(both.state_dict["net.0.weight"], alone.state_dict["net.0.weight"])
    assert torch.allclose(both.state_dict["net.0.weight"], swapped.state_dict["net.0.weight"], atol=1e-5)
    with pytest.raises(ValueError, match="teachers=2 needs that many cached teachers"):
        train(digits, two, teacher=teacher_logits)


def test_more_teachers_than_the_task_has_is_a_config_error(digits):
    from kdcore import check_config

    with pytest.raises(ConfigError, match="teachers=3 is out of range for task 'digits': it has 2"):
        check_config(digits, make_config(teachers=3, device="cpu"))
    with pytest.raises(ConfigError, match="teacher_weights=\[1.0\] is invalid"):
        make_config(teachers=2, teacher_weights=[1.0])


# --- the EMA (online) teacher ---------------------------------------------------------------

def test_the_ema_teacher_is_the_moving_average_of_the_student_after_every_step(digits):
    from kdcore.trainer import _ema_teacher

    config = make_config(ema_decay=0.9, ema_weight=1.0, alpha=0.5, device="cpu")
    model = digits.build_student(0.25)
    ema = _ema_teacher(model, config)
    ema.update_parameters(model)  # the first update copies the student
    before = {k: v.clone() for k, v in ema.module.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    ema.update_parameters(model)
    for name, value in ema.module.state_dict().items():
        if value.is_floating_point():
            expected = 0.9 * before[name] + 0.1 * model.state_dict()[name]
            assert torch.allclose(value, expected, atol=1e-6), name


def test_online_distillation_alone_needs_no_teacher_and_resumes_exactly(digits):
    config = make_config(epochs=3, patience=0, alpha=0.5, ema_decay=0.99, ema_weight=1.0, seed=5, device="cpu")
    checkpoints = []
    whole = train(digits, config, on_checkpoint=checkpoints.append)
    assert "ema" in checkpoints[0]
    assert all(h.kd_loss > 0 for h in whole.history[1:])  # the EMA teacher is a target, not nothing
    resumed = train(digits, config, resume=checkpoints[0])
    assert all(torch.equal(whole.state_dict[k], resumed.state_dict[k]) for k in whole.state_dict)


def test_an_ema_teacher_mixed_with_the_fixed_one_changes_the_training(digits, teacher_logits):
    fixed = make_config(epochs=2, alpha=0.7, seed=6, device="cpu")
    mixed = fixed.model_copy(update={"ema_decay": 0.99, "ema_weight": 0.5})
    a, b = train(digits, fixed, teacher=teacher_logits), train(digits, mixed, teacher=teacher_logits)
    assert a.history[0].kd_loss != b.history[0].kd_loss


def test_an_ema_teacher_mixed_with_a_fixed_one_needs_the_fixed_one(digits):
    with pytest.raises(ValueError, match="needs a teacher"):
        train(digits, make_config(epochs=1, alpha=0.5, ema_decay=0.99, ema_weight=0.5, device="cpu"))


def test_the_no_kd_twin_has_no_schedule_and_no_ema_teacher():
    from kdcore.config import no_kd_twin

    twin = no_kd_twin(make_config(alpha_schedule="linear", alpha_end=0.2, ema_decay=0.99))
    assert not twin.distills() and twin.ema_decay == 0


# --- searched by a sweep --------------------------------------------------------------------

def test_a_sweep_searches_schedules_teachers_and_the_ema_teacher_and_logs_what_each_used(tmp_path, sweep_template,
                                                                                          digits):
    store = copy_store(sweep_template, tmp_path / "store")
    sweep = write_sweep_file(tmp_path / "sched.yaml", {
        "space": {"temperature": {"low": 1, "high": 8}, "temperature_schedule": ["linear", "cosine"],
                  "temperature_end": {"low": 1, "high": 8}, "alpha_schedule": ["constant", "stages"],
                  "ema_weight": {"low": 0.2, "high": 0.8}, "teachers": [1, 2]},
        "train": {"epochs": 4, "patience": 0, "alpha_stages": [[0.5, 0.8], [0.5, 0.4]], "ema_decay": 0.99}})
    run = run_cli("run", "--task", "digits", "--config", str(sweep), "--study", "sched", "--n-trials", "3",
                  "--repeats", "0", "--pruner", "none", "--budget", "120s", "--store", str(store), cwd=tmp_path)
    assert run.returncode == 0, run.explain()
    study, runs = check_sweep_invariants(store, "sched")
    client = mlflow_client(store)
    for trial in study.trials:
        config = make_config(**{"epochs": 4, "patience": 0, "alpha_stages": [[0.5, 0.8], [0.5, 0.4]],
                                "ema_decay": 0.99, **trial.params})
        child = runs.children[trial.number]
        logged = {name: [m.value for m in sorted(client.get_metric_history(child.info.run_id, name),
                                                 key=lambda m: m.step)] for name in ("temperature", "alpha")}
        expected = [config.kd_weights(epoch) for epoch in range(1, 5)]
        assert logged["temperature"] == pytest.approx([t for t, _ in expected])
        assert logged["alpha"] == pytest.approx([a for _, a in expected])
        assert child.data.params["temperature_schedule"] == trial.params["temperature_schedule"]
        assert child.data.params["teachers"] == str(trial.params["teachers"])
    # The study prepared both teachers; its parent run has each one's accuracy and the ensemble's.
    from kdcore import load_or_train_teacher, teacher_outputs
    from kdcore.data import labels_of

    parent = runs.parent.data.metrics
    ready = [load_or_train_teacher(digits, store, device="cpu", spec=spec) for spec in digits.teachers()]
    assert not any(t.trained_now for t in ready)
    assert parent["teacher_test_acc.teacher-seed1"] == pytest.approx(ready[1].test_acc)
    probabilities = sum(torch.softmax(teacher_outputs(digits, t.model, t.digest, store / ".cache" / "teacher",
                                                      device="cpu").logits.test, dim=-1) for t in ready)
    by_hand = (probabilities.argmax(dim=-1) == labels_of(digits.splits().test)).float().mean().item()
    assert parent["ensemble_test_acc.2"] == pytest.approx(by_hand)
