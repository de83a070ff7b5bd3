"""Seed 003's embedding students searched end to end: `kdsweep run` on the built-in retrieval task
searches the embedding KD knobs, selects on validation Recall@1, logs Recall@1 and @5 to MLflow and
Optuna, and ends with the seed's comparison (teacher / no-KD / distilled, retention, uplift)."""

from __future__ import annotations

from pathlib import Path

import pytest
from _sweep_helpers import check_sweep_invariants, mlflow_client, run_cli, write_sweep_file

from sweeps import comparison, comparison_line, trials
from sweeps.search.space import EMBEDDING_SPACE, SearchSpace


@pytest.fixture(scope="module")
def retrieval(tmp_path_factory) -> tuple[Path, object]:
    root = tmp_path_factory.mktemp("retrieval")
    sweep = write_sweep_file(root / "retrieval.yaml", {
        "task": "mnist1d-retrieval",
        "space": {"relational_temperature": {"low": 0.05, "high": 0.5, "log": True}, "embed_loss": ["cosine", "mse"],
                  "alpha": {"low": 0.3, "high": 0.9}, "ratio": [0.25, 0.5]},
        "train": {"epochs": 6, "patience": 0}})
    run = run_cli("run", "--config", str(sweep), "--study", "r", "--n-trials", "3", "--repeats", "2",
                  "--pruner", "none", "--budget", "10m", "--store", str(root / "store"), cwd=root, timeout=600)
    assert run.returncode == 0, run.explain()
    return root / "store", run


def test_an_embedding_task_searches_its_own_default_space():
    assert "temperature" not in EMBEDDING_SPACE and "relational_temperature" in EMBEDDING_SPACE
    assert set(SearchSpace.parse(EMBEDDING_SPACE).dimensions) == {"relational_temperature", "alpha", "ratio", "lr"}


def test_every_trial_is_scored_by_recall_at_1_in_optuna_and_mlflow(retrieval):
    store, _ = retrieval
    study, runs = check_sweep_invariants(store, "r")
    assert study.user_attrs["kdsweep.score"] == "Recall@1"
    client = mlflow_client(store)
    done = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert done
    for trial in done:
        attrs, child = trial.user_attrs, runs.children[trial.number]
        # best_val_acc holds the task's score, validation Recall@1; selection maximises it.
        assert trial.values[0] == attrs["best_val_acc"] == attrs["val_recall_at_1"]
        assert attrs["test_acc"] == attrs["test_recall_at_1"] <= attrs["test_recall_at_5"] <= 1
        history = client.get_metric_history(child.info.run_id, "val_recall_at_1")
        assert max(m.value for m in history) == pytest.approx(attrs["best_val_acc"])
        assert {"val_recall_at_5", "kd_direct_loss", "kd_relational_loss"} <= set(child.data.metrics)
        assert child.data.metrics["test_recall_at_1"] == pytest.approx(attrs["test_recall_at_1"])
        # The INT8 copy is scored the same way, and not by an argmax over embedding dimensions.
        assert abs(attrs["int8_test_acc"] - attrs["test_acc"]) < 0.1


def test_the_trials_frame_says_what_its_score_is_and_shows_recall_at_5(retrieval):
    store, _ = retrieval
    frame = trials("r", store=store)
    assert frame.attrs["score"] == "Recall@1"
    first = list(frame.columns).index("best_val_acc")
    assert list(frame.columns[first:first + 4]) == ["best_val_acc", "test_acc", "val_recall_at_5", "test_recall_at_5"]
    done = frame[frame["state"] == "COMPLETE"]
    assert (done["val_recall_at_5"] >= done["best_val_acc"]).all()


def test_the_run_ends_with_the_seeds_comparison_from_paired_repeats(retrieval):
    store, run = retrieval
    verdict = comparison("r", store=store)
    assert verdict["kd_repeats"] == 2 and verdict["kd_verdict"] != "incomplete"
    line = comparison_line(verdict, "Recall@1")
    assert line in run.stdout
    assert f"teacher {verdict['teacher_test_acc']:.3f}" in line and "retention" in line and "uplift" in line
    assert verdict["retention"] == pytest.approx(verdict["distilled_test_acc"] / verdict["teacher_test_acc"])
    assert "val Recall@1" in run.stdout and "test Recall@1" in run.stdout


def test_an_exported_embedding_student_is_rescored_by_recall_at_1(retrieval, tmp_path):
    from sweeps import best, export_student

    store, _ = retrieval
    chosen = best("r", store=store)
    done = export_student("r", tmp_path / "student.pt2", store=store, log_to_mlflow=False)
    # The reloaded file's own Recall@1, as the trial recorded it: not an argmax over embedding dimensions.
    assert done.score == "Recall@1"
    assert done.test_acc == pytest.approx(chosen["test_acc"], abs=1e-4)
    assert done.checkpoint_test_acc == pytest.approx(chosen["test_acc"])


def test_an_embedding_student_compresses_and_exports_scored_by_recall_at_1(retrieval, tmp_path):
    from sweeps import best, compress_trial, export_student

    store, _ = retrieval
    done = compress_trial("r", prune=0.5, bits=8, epochs=2, store=store)
    start, pruned, quantized = done.steps
    assert done.score == "Recall@1" and start.test_acc == pytest.approx(best("r", store=store)["test_acc"])
    assert pruned.params < start.params and quantized.size_bytes < pruned.size_bytes
    assert 0.3 < quantized.test_acc <= 1  # Recall@1 of what runs; an argmax over embedding dimensions is near 0.1
    exported = export_student("r", tmp_path / "student.pt2", run=done.run_id, store=store, log_to_mlflow=False)
    assert exported.score == "Recall@1" and exported.test_acc == pytest.approx(quantized.test_acc, abs=1e-4)


def test_the_comparison_line_is_withheld_for_an_incomplete_verdict():
    table = {"kd_verdict": "helps", "teacher_test_acc": 0.9, "nokd_test_acc": 0.8, "distilled_test_acc": 0.85,
             "kd_gain": 0.05, "kd_gain_ci95_low": 0.01, "kd_gain_ci95_high": 0.09, "kd_repeats": 3}
    assert comparison_line(table) == ("test accuracy: teacher 0.900, no-KD 0.800, distilled 0.850 (retention 94.4%); "
                                      "uplift +0.050 (95% CI +0.010 to +0.090, 3 paired seeds)")
    assert comparison_line({**table, "kd_verdict": "incomplete"}) is None
    assert comparison_line({k: v for k, v in table.items() if k != "kd_gain"}) is None
