"""Embedding tasks (Task.kind "embedding"): Recall@K, the embedding KD terms, the projection head,
their settings, the teacher cache of embeddings, and a real distillation of mnist1d-retrieval."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils.data import TensorDataset

from kdcore import (
    ConfigError,
    ProxyLoss,
    Splits,
    TaskError,
    TeacherSpec,
    TrainConfig,
    cache_key,
    check_config,
    embedding_kd_loss,
    evaluate_model,
    get_task,
    load_or_train_teacher,
    make_config,
    recall_at_k,
    teacher_outputs,
    train,
)
from kdcore.config import check_setting
from kdcore.objective import build_objective
from kdcore.preflight import preflight  # `from kdcore import preflight` can give the module of that name
from kdcore.tasks.mnist1d_retrieval import MNIST1DRetrievalTask

# Five unit vectors at these angles (degrees) and labels: worked out by hand below.
ANGLES = (0, 10, 90, 100, 180)
LABELS = (0, 1, 1, 0, 0)


def _at_angles(angles) -> torch.Tensor:
    radians = torch.tensor(angles, dtype=torch.float64) * math.pi / 180
    return torch.stack([radians.cos(), radians.sin()], dim=1)


# --- Recall@K -------------------------------------------------------------------------------

def test_recall_at_k_matches_a_hand_count():
    # Neighbours by angle: 0 -> 10, 90, 100, 180; 10 -> 0, 90, 100; 90 -> 100, 10; 100 -> 90, 180;
    # 180 -> 100 (label 0, a hit at 1). At 2: 10 finds 90, 90 finds 10, 100 finds 180. At 4: all.
    recalls = recall_at_k(_at_angles(ANGLES), torch.tensor(LABELS), ks=(1, 2, 4))
    assert recalls == {1: pytest.approx(1 / 5), 2: pytest.approx(4 / 5), 4: pytest.approx(1.0)}


def test_recall_at_k_uses_cosine_so_lengths_do_not_matter():
    embeddings = _at_angles(ANGLES) * torch.tensor([[5.0], [0.1], [1.0], [30.0], [2.0]], dtype=torch.float64)
    assert recall_at_k(embeddings, torch.tensor(LABELS), ks=(1, 2)) == {1: pytest.approx(0.2), 2: pytest.approx(0.8)}


def test_recall_at_k_in_blocks_equals_all_at_once():
    generator = torch.Generator().manual_seed(0)
    embeddings, labels = torch.randn(300, 8, generator=generator), torch.randint(0, 7, (300,), generator=generator)
    whole = recall_at_k(embeddings, labels, ks=(1, 5))
    assert recall_at_k(embeddings, labels, ks=(1, 5), block=7) == whole
    assert 0 < whole[1] < whole[5] < 1


def test_recall_at_k_needs_k_below_the_split_size():
    with pytest.raises(ValueError, match=r"ks=\[1, 5\] must be between 1 and N - 1 = 4"):
        recall_at_k(torch.randn(5, 3), torch.zeros(5, dtype=torch.long), ks=(1, 5))


# --- embedding KD terms ---------------------------------------------------------------------

STUDENT = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
TEACHER = torch.tensor([[1.0, 1.0], [0.0, 2.0], [-1.0, 0.0]])


def _hand_relational(student, teacher, temperature):
    """KL(teacher row || student row) of softmax(cosine / T) over the other items, batch mean."""
    def rows(points):
        def cos(a, b):
            return sum(x * y for x, y in zip(a, b)) / math.hypot(*a) / math.hypot(*b)
        out = []
        for i, a in enumerate(points):
            logits = [cos(a, b) / temperature for j, b in enumerate(points) if j != i]
            total = sum(math.exp(v) for v in logits)
            out.append([math.exp(v) / total for v in logits])
        return out
    kl = sum(t * math.log(t / s) for p_t, p_s in zip(rows(teacher.tolist()), rows(student.tolist()))
             for t, s in zip(p_t, p_s))
    return kl / len(student)


def test_cosine_direct_term_is_one_minus_cosine_batch_mean():
    # cosines 1/sqrt(2), 1, -1/sqrt(2)
    loss = embedding_kd_loss(STUDENT, TEACHER, embed_loss="cosine", relational_weight=0.0)
    assert loss.direct.item() == pytest.approx(((1 - 1 / math.sqrt(2)) + 0 + (1 + 1 / math.sqrt(2))) / 3)
    assert loss.total.item() == pytest.approx(loss.direct.item())


def test_mse_direct_term_is_the_mean_squared_difference_of_raw_vectors():
    # differences (0, -1), (0, -1), (2, 1): squares 0 + 1 + 0 + 1 + 4 + 1 over 6 entries
    loss = embedding_kd_loss(STUDENT, TEACHER, embed_loss="mse")
    assert loss.direct.item() == pytest.approx(7 / 6)


def test_relational_term_matches_a_hand_computed_kl_of_similarity_rows():
    loss = embedding_kd_loss(STUDENT, TEACHER, relational_temperature=0.5, embed_weight=0.0)
    assert loss.relational.item() == pytest.approx(_hand_relational(STUDENT, TEACHER, 0.5), rel=1e-5)
    assert loss.total.item() == pytest.approx(loss.relational.item())


def test_total_weighs_the_two_terms():
    loss = embedding_kd_loss(STUDENT, TEACHER, embed_weight=0.3, relational_weight=2.0, relational_temperature=0.5)
    assert loss.total.item() == pytest.approx(0.3 * loss.direct.item() + 2.0 * loss.relational.item())


def test_relational_term_is_zero_when_the_similarities_agree_and_for_a_batch_of_one():
    assert embedding_kd_loss(STUDENT, STUDENT * 3).relational.item() == pytest.approx(0.0, abs=1e-7)
    assert embedding_kd_loss(STUDENT[:1], TEACHER[:1]).relational.item() == 0.0


def test_the_relational_term_compares_each_models_own_similarities_across_widths():
    wide_teacher = torch.cat([TEACHER, torch.zeros(3, 5)], dim=1)  # same similarities, width 7
    projected = torch.randn(3, 7)
    loss = embedding_kd_loss(STUDENT, wide_teacher, projected_emb=projected, relational_temperature=0.5)
    assert loss.relational.item() == pytest.approx(_hand_relational(STUDENT, TEACHER, 0.5), rel=1e-5)


def test_different_widths_without_a_projection_say_how_to_fix_it():
    with pytest.raises(ValueError, match=r"\(3, 2\) do not match the teacher's \(3, 4\); pass projected_emb"):
        embedding_kd_loss(STUDENT, torch.randn(3, 4))


# --- settings -------------------------------------------------------------------------------

@pytest.mark.parametrize(("name", "value", "message"), [
    ("embed_loss", "l1", "embed_loss='l1' is invalid (input should be 'cosine' or 'mse')"),
    ("embed_weight", -0.5, "embed_weight=-0.5 is out of range (allowed: [0, 100])"),
    ("relational_weight", 101, "relational_weight=101 is out of range (allowed: [0, 100])"),
    ("relational_temperature", 0.001, "relational_temperature=0.001 is out of range (allowed: [0.01, 10])"),
])
def test_a_bad_embedding_setting_is_one_line_naming_the_value_and_what_is_allowed(name, value, message):
    for check in (lambda: check_setting(name, value), lambda: make_config(**{name: value})):
        with pytest.raises(ConfigError) as error:
            check()
        assert str(error.value) == message


def test_both_embedding_weights_zero_is_rejected_for_the_whole_config_only():
    check_setting("embed_weight", 0.0)  # a searched range may start at 0
    with pytest.raises(ConfigError, match="embed_weight=0 and relational_weight=0 leave the embedding KD term empty"):
        make_config(embed_weight=0.0, relational_weight=0.0)


def test_a_classification_task_rejects_embedding_settings():
    with pytest.raises(ConfigError, match=r"relational_weight=0.5 apply to embedding tasks only, and task 'digits' "
                                          r"is a classification task: remove them"):
        check_config(get_task("digits"), make_config(relational_weight=0.5, device="cpu"))


def test_an_embedding_task_rejects_an_ensemble_or_ema_teacher(retrieval):
    for settings, named in (({"teachers": 2}, "teachers=2"), ({"ema_decay": 0.9}, "ema_decay=0.9")):
        with pytest.raises(ConfigError, match=f"{named} is not supported for embedding task 'mnist1d-retrieval'"):
            check_config(retrieval, make_config(device="cpu", **settings))


# --- teacher, cache, projection head and a real run -----------------------------------------

FAST = {"device": "cpu", "batch_size": 128, "epochs": 2, "patience": 0}


@pytest.fixture(scope="module")
def retrieval() -> MNIST1DRetrievalTask:
    return get_task("mnist1d-retrieval")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return tmp_path_factory.mktemp("store")


@pytest.fixture(scope="module")
def teacher(retrieval, store):
    # A short teacher: what matters here is that it trains with the task's loss through `train`.
    spec = TeacherSpec("teacher", retrieval.build_teacher,
                       retrieval.teacher_config().model_copy(update={"epochs": 6}))
    return load_or_train_teacher(retrieval, store, device="cpu", spec=spec)


@pytest.fixture(scope="module")
def cached(retrieval, teacher, store):
    return teacher_outputs(retrieval, teacher.model, teacher.digest, store / "cache", device="cpu")


def test_the_teacher_trains_with_the_task_loss_and_reports_recall_at_1(teacher):
    assert teacher.trained_now
    assert 0.5 < teacher.test_acc <= 1  # Recall@1 over 10 digits: chance is about 0.1


def test_teacher_embeddings_are_cached_once_per_split_and_reused(retrieval, teacher, cached, store):
    splits = retrieval.splits()
    assert cached.logits.train.shape == (len(splits.train), retrieval.teacher_dim)
    assert cached.logits.test.shape == (len(splits.test), retrieval.teacher_dim)
    again = teacher_outputs(retrieval, teacher.model, teacher.digest, store / "cache", device="cpu")
    assert again.hit and again.path == cached.path
    assert torch.equal(again.logits.val, cached.logits.val)


def test_the_cache_key_keeps_embeddings_apart_from_logits_of_the_same_data(retrieval, teacher):
    class SameDataAsClassifier(MNIST1DRetrievalTask):
        kind = "classification"

    assert cache_key(SameDataAsClassifier(), teacher.digest) != cache_key(retrieval, teacher.digest)


def _objective(task, ratio, teacher, **settings):
    from kdcore.data import BatchSource

    config = make_config(**{**FAST, "ratio": ratio, **settings})
    return build_objective(task, config, task.build_student(ratio), teacher,
                           BatchSource(task.splits().train, 4, torch.device("cpu")))


def test_a_projection_head_exists_only_when_the_widths_differ(retrieval, cached):
    narrow = _objective(retrieval, 0.25, [cached.logits])
    assert (narrow.head.in_features, narrow.head.out_features) == (16, 64)
    assert _objective(retrieval, 1.0, [cached.logits]).head is None
    assert _objective(retrieval, 0.25, None, alpha=0.0).head is None  # no teacher, nothing to project to


def test_a_live_teacher_module_sets_the_head_like_its_cached_embeddings(retrieval, teacher):
    assert _objective(retrieval, 0.5, teacher.model).head.out_features == 64


@pytest.fixture(scope="module")
def distilled(retrieval, cached):
    checkpoints = []
    config = make_config(**FAST, ratio=0.25, alpha=0.7, embed_weight=0.5, relational_weight=2.0)
    result = train(retrieval, config, teacher=cached.logits, on_checkpoint=checkpoints.append)
    return config, result, checkpoints


def test_a_distilled_student_logs_each_kd_part_and_its_recall(distilled):
    config, result, _ = distilled
    for epoch in result.history:
        metrics = epoch.metrics()
        assert epoch.score_name == "recall_at_1" and metrics["val_recall_at_1"] == epoch.val_acc
        assert 0 < metrics["val_recall_at_1"] <= metrics["val_recall_at_5"] <= 1
        assert metrics["kd_direct_loss"] > 0 and metrics["kd_relational_loss"] > 0
        assert metrics["kd_loss"] == pytest.approx(0.5 * metrics["kd_direct_loss"] + 2.0 * metrics["kd_relational_loss"])
        assert metrics["train_loss"] == pytest.approx(0.7 * metrics["kd_loss"] + 0.3 * metrics["ce_loss"])
        assert all(isinstance(v, float) and math.isfinite(v) for v in metrics.values())
    assert result.score_name == "recall_at_1"
    assert result.extra["test_recall_at_1"] == result.test_acc
    assert result.extra["val_recall_at_1"] == result.best_val_acc
    assert result.test_acc <= result.extra["test_recall_at_5"]


def test_the_exported_student_has_no_projection_head_or_proxies(retrieval, distilled):
    _, result, checkpoints = distilled
    assert result.state_dict.keys() == retrieval.build_student(0.25).state_dict().keys()
    assert {"task_loss.proxies", "head.weight", "head.bias"} <= checkpoints[-1]["objective"].keys()


def test_resume_restores_the_proxies_and_head_and_matches_the_uninterrupted_run(retrieval, cached, distilled):
    config, uninterrupted, checkpoints = distilled
    resumed = train(retrieval, config, teacher=cached.logits, resume=checkpoints[0])
    assert all(torch.equal(resumed.state_dict[k], uninterrupted.state_dict[k]) for k in resumed.state_dict)
    assert resumed.test_acc == uninterrupted.test_acc


def test_a_classification_run_logs_exactly_the_fields_it_always_did():
    result = train(get_task("digits"), TrainConfig(alpha=0.0, epochs=1, device="cpu"))
    assert result.score_name == "val_acc" and result.extra == {}
    assert set(result.history[0].metrics()) == {
        "train_loss", "kd_loss", "ce_loss", "val_loss", "val_acc", "lr", "epoch_time_s", "samples_per_s",
        "train_fraction", "temperature", "alpha"}


def test_a_live_teacher_module_trains_the_student_like_its_cached_embeddings(retrieval, teacher, cached):
    config = make_config(**{**FAST, "epochs": 1}, ratio=0.25)
    live = train(retrieval, config, teacher=teacher.model)
    from_cache = train(retrieval, config, teacher=cached.logits)
    assert max((live.state_dict[k] - from_cache.state_dict[k]).abs().max().item() for k in live.state_dict) < 1e-3
    assert live.history[0].extra["kd_direct_loss"] == pytest.approx(from_cache.history[0].extra["kd_direct_loss"])


def test_a_transfer_set_feeds_the_embedding_kd_terms(retrieval, cached):
    config = make_config(**{**FAST, "epochs": 1}, ratio=0.25, data_fraction=0.3, transfer_ratio=1.0)
    result = train(retrieval, config, teacher=cached.logits)
    assert result.history[0].extra["kd_relational_loss"] > 0 and math.isfinite(result.test_acc)


def test_an_int8_embedding_student_is_scored_by_recall_at_1(retrieval, distilled):
    from kdcore import int8_metrics, quantize_int8

    _, result, _ = distilled
    student = retrieval.build_student(0.25)
    student.load_state_dict(result.state_dict)
    splits = retrieval.splits()
    metrics = int8_metrics(quantize_int8(student), splits.val, splits.test, splits.train[0][0], task=retrieval)
    assert metrics["int8_test_acc"] == pytest.approx(result.test_acc, abs=0.03)


# --- preflight ------------------------------------------------------------------------------

def test_preflight_accepts_the_built_in_retrieval_task(retrieval):
    check_config(retrieval, make_config(device="cpu", **retrieval.defaults()))


def test_preflight_names_an_unknown_task_kind():
    class Ranking(MNIST1DRetrievalTask):
        kind = "ranking"

    with pytest.raises(TaskError, match="kind is 'ranking'; set it to one of 'classification', 'embedding'"):
        preflight(Ranking(), [0.5])


def test_preflight_refuses_a_validation_split_too_small_for_recall_at_5(retrieval):
    class Tiny(MNIST1DRetrievalTask):
        def splits(self):
            full = retrieval.splits()
            return Splits(full.train, TensorDataset(*(t[:5] for t in full.val.tensors)), full.test)

    with pytest.raises(TaskError, match=r"splits\(\).val has 5 samples; an embedding task's val and test splits "
                                        "need more than 5"):
        preflight(Tiny(), [0.5])


# --- the task's own loss --------------------------------------------------------------------

def test_proxy_loss_is_cross_entropy_over_scaled_cosines_to_the_class_proxies():
    loss = ProxyLoss(num_classes=2, dim=2)
    with torch.no_grad():
        loss.proxies.copy_(torch.tensor([[2.0, 0.0], [0.0, 1.0]]))  # lengths do not matter
    embeddings, labels = torch.tensor([[3.0, 0.0], [1.0, 1.0]]), torch.tensor([1, 1])
    # cosines to the proxies: (1, 0) and (1/sqrt 2, 1/sqrt 2); the second item's are equal: log 2
    first = -math.log(math.exp(0) / (math.exp(16) + math.exp(0)))
    assert loss(embeddings, labels).item() == pytest.approx((first + math.log(2)) / 2, rel=1e-5)


def test_a_raw_student_learns_from_the_proxy_loss_alone(retrieval):
    import contextlib

    from kdcore.data import BatchSource

    config = make_config(**{**FAST, "epochs": 3}, ratio=0.25, alpha=0.0, lr=1e-2)
    result = train(retrieval, config)
    torch.manual_seed(config.seed)  # the student train starts from
    untrained = evaluate_model(retrieval, retrieval.build_student(0.25),
                               BatchSource(retrieval.splits().val, 512, torch.device("cpu")), contextlib.nullcontext)
    assert result.history[0].extra["kd_direct_loss"] == 0 and result.history[-1].kd_loss == 0
    assert result.history[-1].ce_loss < result.history[0].ce_loss
    assert result.best_val_acc > untrained.score + 0.1, untrained
    assert math.isnan(untrained.loss)  # no proxies outside training
