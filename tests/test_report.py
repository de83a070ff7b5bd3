"""`kdsweep report`: a self-contained HTML page with every figure, PNG files, and the same files
logged to the study's parent MLflow run; few-trial studies degrade with a note, not a crash."""

from __future__ import annotations

import base64
import html
import re

import optuna
import pytest
from _study_edits import HELPS, add_test_best_trial, log_verdict, stale_then_incomplete
from _sweep_store import copy_store
from mlflow import MlflowClient
from typer.testing import CliRunner

from cli.main import app
from sweeps import comparison, pareto, trials, verdict_line, write_report
from sweeps.tracking.storage import open_storage

FIGURES = ["accuracy_vs_params.png", "accuracy_vs_time.png", "int8_vs_fp32.png", "validation_curves.png",
           "param_importances.png", "parallel_coordinates.png", "epoch_time_by_ratio.png"]
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def reported(swept, tmp_path_factory):
    """A report written through the CLI, on a private copy of the swept store with a 'helps' verdict and
    a trial that is the best on test accuracy but not on validation accuracy."""
    store = copy_store(swept, tmp_path_factory.mktemp("report"))
    add_test_best_trial(store)
    log_verdict(store, "helps", HELPS)
    out = store.root.parent / "out"
    result = CliRunner().invoke(app, ["report", store.study, "--out", str(out), *store.options])
    assert result.exit_code == 0, result.output
    return store, out, (out / "report.html").read_text(encoding="utf-8"), result.stdout


def _trial_numbers(page: str, heading: str) -> list[int]:
    """The trial numbers of the table that follows the heading starting with ``heading``."""
    section = page.split(f"<h2>{heading}", 1)[1].split("</table>", 1)[0]
    return [int(n) for n in re.findall(r"<tr><td>(\d+)</td>", section)]


def test_report_writes_every_figure_as_png(reported):
    _, out, _, _ = reported
    for name in FIGURES:
        data = (out / name).read_bytes()
        assert data.startswith(PNG), name
        assert len(data) > 10_000, name  # a drawn figure, not an empty canvas


def test_html_embeds_the_same_pngs_and_needs_nothing_else(reported):
    _, out, page, _ = reported
    embedded = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert [base64.b64decode(data) for data in embedded] == [(out / name).read_bytes() for name in FIGURES]
    assert not re.search(r'(src|href)="(?!data:)', page), "the page must not load anything from elsewhere"
    assert "Not drawn" not in page


def test_html_has_the_teacher_nokd_distilled_table_and_trial_tables(reported):
    _, _, page, _ = reported
    for text in ("teacher", "student without KD", "distilled student", "retention of the teacher", "KD gain",
                 "Pareto-optimal trials", "Top "):
        assert text in page, text


def test_html_shows_the_verdict_with_its_interval_and_pairs(reported):
    store, _, page, _ = reported
    line = verdict_line(comparison(store.study, store=store.root))
    assert line.startswith("KD verdict: helps — gain +0.082 (95% CI +0.051 to +0.113, 3 paired seeds)")
    assert f"<strong>{html.escape(line)}</strong>" in page
    assert "<td>+0.082 (95% CI +0.051 to +0.113, 3 paired seeds)</td>" in page  # the distilled row's gain
    assert "<td>0.6620</td>" in page and "<td>0.7440</td>" in page  # no-KD and distilled means


def test_report_fronts_and_top_trials_are_chosen_on_validation(reported):
    store, _, page, _ = reported
    frame = trials(store.study, store=store.root)
    complete = frame[frame["state"] == "COMPLETE"]
    test_best = int(frame.loc[frame["test_acc"].idxmax(), "number"])
    top = _trial_numbers(page, "Top ")
    assert top[0] == complete.sort_values("best_val_acc", ascending=False, kind="stable")["number"].iloc[0]
    assert top[0] != test_best
    assert sorted(_trial_numbers(page, "Pareto-optimal")) == sorted(pareto(frame)["number"])
    assert test_best not in _trial_numbers(page, "Pareto-optimal")


def test_an_incomplete_verdict_shows_its_reason_and_no_gain(swept, tmp_path):
    store = copy_store(swept, tmp_path)
    stale_then_incomplete(store, "repeat 3 of the no-KD arm was cut by the deadline")
    page = write_report(store.study, tmp_path / "out", store=store.root, log_to_mlflow=False).read_text("utf-8")
    assert "KD verdict: incomplete (repeat 3 of the no-KD arm was cut by the deadline)" in page
    assert "student without KD" not in page and "+0.082" not in page and "No KD gain" in page


def test_cli_prints_where_the_report_is(reported):
    _, out, _, stdout = reported
    assert str(out / "report.html") in stdout


def test_report_files_are_logged_to_the_parent_run(reported):
    store, _, _, _ = reported
    client = MlflowClient(store.tracking_uri)
    experiment = client.get_experiment_by_name(store.study)
    parent = client.search_runs([experiment.experiment_id], "tags.`kdsweep.kind` = 'study'")[0]
    logged = {item.path.split("/")[-1] for item in client.list_artifacts(parent.info.run_id, "report")}
    assert logged == {"report.html", *FIGURES}


def test_report_refreshes_the_pareto_tags(reported):
    store, _, _, _ = reported
    client = MlflowClient(store.tracking_uri)
    experiment = client.get_experiment_by_name(store.study)
    trial_runs = client.search_runs([experiment.experiment_id], "tags.`kdsweep.kind` = 'trial'")
    assert {r.data.tags.get("pareto") for r in trial_runs} == {"true", "false"}
    front = sorted(pareto(trials(store.study, store=store.root))["number"])
    tagged = [int(r.data.tags["optuna.trial_number"]) for r in trial_runs if r.data.tags["pareto"] == "true"]
    assert sorted(tagged) == front


def test_a_study_with_one_trial_gets_notes_instead_of_figures(swept, tmp_path):
    store = copy_store(swept, tmp_path)
    study = optuna.create_study(study_name="tiny", storage=open_storage(store.storage_url), direction="maximize")
    study.add_trial(optuna.trial.create_trial(
        params={"temperature": 2.0, "ratio": 0.5},
        distributions={"temperature": optuna.distributions.FloatDistribution(1, 20),
                       "ratio": optuna.distributions.FloatDistribution(0.05, 1)},
        value=0.9, intermediate_values={1: 0.5, 2: 0.9},
        user_attrs={"test_acc": 0.91, "student_params": 1000, "train_time_s": 1.0, "epoch_time_s": 0.02}))
    page = write_report("tiny", tmp_path / "tiny", store=store.root).read_text(encoding="utf-8")
    assert page.count("data:image/png;base64,") == 3  # the two accuracy views and the validation curves
    assert page.count("Not drawn: needs at least 2 COMPLETE trials") == 2
    assert "Not drawn: fewer than 2 trials with a measured epoch time" in page
    assert "No comparison yet" in page
    assert not (tmp_path / "tiny" / "param_importances.png").exists()
