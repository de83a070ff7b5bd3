"""`kdsweep ui` starts a real `mlflow server` over a store a real sweep wrote; through its REST API
(the calls the MLflow UI makes) the experiment, the parent run, every trial run, their metric
histories, the Pareto tags and the checkpoint artifacts must all be visible."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import torch
from _sweep_store import REPO, copy_store

from sweeps import best, comparison, load_student, trials, update_pareto_tags
from sweeps.report.ui import _descendants, experiment_path
from sweeps.tracking.store import Store
from sweeps.tracking.run_logger import STUDENT_FORMAT

_START_S = 120


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Server:
    """The REST API of a running MLflow server."""

    def __init__(self, url: str) -> None:
        self.url = url

    def raw(self, endpoint: str, /, **query) -> bytes:
        with urllib.request.urlopen(f"{self.url}{endpoint}?{urllib.parse.urlencode(query, doseq=True)}",
                                    timeout=30) as response:
            return response.read()

    def get(self, endpoint: str, /, **query) -> dict:
        return json.loads(self.raw(endpoint, **query))

    def post(self, endpoint: str, body: dict) -> dict:
        request = urllib.request.Request(f"{self.url}{endpoint}", data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())


def _server_pids(port: int) -> list[int]:
    """Processes of the mlflow server on ``port`` (for clean-up if `kdsweep ui` did not stop it)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            command = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if entry.name.isdigit() and b"server" in command and str(port).encode() in command:
            found.append(int(entry.name))
    return found


@pytest.fixture(scope="module")
def server(swept, tmp_path_factory):
    """`kdsweep ui` on a copy of the swept store (Pareto tags brought up to date), stopped with Ctrl-C."""
    store = copy_store(swept, tmp_path_factory.mktemp("ui"))
    update_pareto_tags(store.study, store=store.root)
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "KDSWEEP_STORE")}
    # SIGINT as in a terminal's foreground job: pytest started in the background (a CI script, `cmd &`)
    # hands SIGINT down ignored, and the UI rightly keeps ignoring it (SIGTERM stops it there).
    ui = subprocess.Popen([sys.executable, "-m", "cli.main", "ui", "--port", str(port), *store.options], cwd=REPO,
                          env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
                          preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + _START_S
        while True:
            assert ui.poll() is None, f"kdsweep ui exited early: {ui.stdout.read()}"
            try:
                urllib.request.urlopen(f"{url}/health", timeout=2).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "mlflow server did not start"
                time.sleep(0.3)
        yield store, Server(url), ui
    finally:
        if ui.poll() is None:
            tree = _descendants(ui.pid)  # the server runs in a session of its own: killpg(ui) misses it
            ui.send_signal(signal.SIGINT)  # what Ctrl-C does
            try:
                ui.wait(timeout=30)
            except subprocess.TimeoutExpired:
                for pid in [ui.pid, *tree]:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
        for pid in _server_pids(port):
            os.kill(pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def api(server):
    store, rest, _ = server
    experiment = rest.get("/api/2.0/mlflow/experiments/get-by-name", experiment_name=store.study)["experiment"]
    found = rest.post("/ajax-api/2.0/mlflow/runs/search",
                      {"experiment_ids": [experiment["experiment_id"]], "max_results": 1000})["runs"]
    return store, rest, experiment, found


def _tags(run: dict) -> dict[str, str]:
    return {t["key"]: t["value"] for t in run["data"].get("tags", [])}


def _parent(found: list[dict]) -> dict:
    (parent,) = [r for r in found if _tags(r).get("kdsweep.kind") == "study"]
    return parent


def test_the_ui_page_itself_is_served(server):
    _, rest, _ = server
    assert b"<html" in rest.raw("/").lower()


def test_experiment_is_named_after_the_study(api):
    store, _, experiment, _ = api
    assert experiment["name"] == store.study
    assert experiment["artifact_location"] == (store.root / "artifacts" / store.study).as_uri()


def test_parent_run_carries_the_study_summary(api):
    store, rest, _, found = api
    parent = _parent(found)
    assert parent["info"]["run_name"] == store.study
    metrics = {m["key"]: m["value"] for m in parent["data"]["metrics"]}
    assert {"teacher_test_acc", "best_val_acc", "best_test_acc", "distilled_test_acc"} <= set(metrics)
    # The UI shows the verdict numbers the query API reads (kdsweep best/compare/report).
    verdict = comparison(store.study, store=store.root)
    assert verdict and all(metrics[k] == v for k, v in verdict.items() if not isinstance(v, str) and k in metrics)
    assert _tags(parent).get("kd_verdict") == verdict.get("kd_verdict")
    listed = rest.get("/ajax-api/2.0/mlflow/artifacts/list", run_id=parent["info"]["run_id"])["files"]
    assert {"comparison.json", "space.json"} <= {f["path"] for f in listed}


def test_every_trial_is_a_child_run_of_the_parent(api):
    store, _, _, found = api
    frame = trials(store.study, store=store.root)
    parent_id = _parent(found)["info"]["run_id"]
    children = [r for r in found if _tags(r).get("mlflow.parentRunId") == parent_id]
    assert sorted(int(_tags(r)["optuna.trial_number"]) for r in children) == list(frame["number"])
    assert {r["info"]["run_id"] for r in children} == set(frame["mlflow_run_id"])
    # Children are the trials, 1:1: the verdict's repeat runs sit beside them, not under the parent.
    assert all(_tags(r)["kdsweep.kind"] == "trial" for r in children)


def test_metric_histories_have_one_point_per_epoch(api):
    store, rest, _, _ = api
    frame = trials(store.study, store=store.root)
    for row in frame.itertuples():
        for metric in ("val_acc", "train_loss", "epoch_time_s"):
            history = rest.get("/ajax-api/2.0/mlflow/metrics/get-history", run_id=row.mlflow_run_id,
                               metric_key=metric)["metrics"]
            assert sorted(m["step"] for m in history) == list(range(1, row.epochs_run + 1)), (row.number, metric)
    # The run-comparison charts fetch many runs at once.
    bulk = rest.get("/ajax-api/2.0/mlflow/metrics/get-history-bulk-interval", run_ids=list(frame["mlflow_run_id"]),
                    metric_key="val_acc", max_results=1000)["metrics"]
    assert {m["run_id"] for m in bulk} == set(frame["mlflow_run_id"])


def test_pareto_tag_filters_the_pareto_trials(api):
    store, rest, experiment, _ = api
    frame = trials(store.study, store=store.root)
    tagged = rest.post("/ajax-api/2.0/mlflow/runs/search", {"experiment_ids": [experiment["experiment_id"]],
                                                            "filter": "tags.pareto = 'true'"})["runs"]
    assert sorted(int(_tags(r)["optuna.trial_number"]) for r in tagged) == sorted(frame.loc[frame["pareto"], "number"])


def test_checkpoints_are_listed_and_download_as_the_student(api):
    store, rest, _, _ = api
    frame = trials(store.study, store=store.root)
    for row in frame.itertuples():
        files = rest.get("/ajax-api/2.0/mlflow/artifacts/list", run_id=row.mlflow_run_id, path="checkpoint")["files"]
        assert [f["path"] for f in files] == ["checkpoint/student.pt"]
        assert int(files[0]["file_size"]) > 0
    row = best(frame)
    data = rest.raw("/get-artifact", path="checkpoint/student.pt", run_uuid=row["mlflow_run_id"])
    checkpoint = torch.load(io.BytesIO(data), weights_only=True)
    assert checkpoint["format"] == STUDENT_FORMAT
    expected = load_student(store.study, int(row["number"]), store=store.root).state_dict()
    assert checkpoint["state_dict"].keys() == expected.keys()
    assert all(torch.equal(checkpoint["state_dict"][k], expected[k]) for k in expected)


_BROWSER = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.skipif(_BROWSER is None, reason="needs a headless browser: apt-get install chromium")
def test_a_headless_browser_opens_the_study_on_its_runs_table(api, tmp_path):
    # What a user sees at the URL `kdsweep ui --study` prints. MLflow 3 opens an experiment on its
    # GenAI overview (traces, no runs) unless the URL asks for the model-training view.
    store, rest, experiment, found = api
    url = rest.url + experiment_path(Store.resolve(store.root), store.study)
    assert url.endswith(f"/#/experiments/{experiment['experiment_id']}/runs?workflowType=machine_learning")
    page = subprocess.run([_BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=30000",
                           f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", url],
                          capture_output=True, text=True, timeout=180).stdout
    shown = re.search(r"<strong>(\d+)</strong> matching runs", page)
    assert shown, f"no runs table at {url}: {page[:300]!r}"
    assert int(shown[1]) == len(found)  # the parent, every trial, every repeat
    names = {r["info"]["run_name"] for r in found if not _tags(r).get("mlflow.parentRunId")}
    assert names and all(f">{name}</span>" in page for name in names)  # top-level rows; trials fold under the parent


def test_ctrl_c_stops_the_ui_and_its_server(server):
    _, rest, ui = server
    ui.send_signal(signal.SIGINT)
    assert ui.wait(timeout=30) == 0
    assert "MLflow UI: http://127.0.0.1:" in ui.stdout.read()
    with pytest.raises(OSError):
        urllib.request.urlopen(f"{rest.url}/health", timeout=2)
