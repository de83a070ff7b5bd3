"""The CLI as a user meets it: follow-up hints that work when pasted, a resume-mismatch error that
says how to resume, help that shows every default, --version, --debug, and a `kdsweep ui` that
stops its whole server tree on SIGTERM and SIGHUP. Everything is real: a tiny digits sweep, the CLI
in subprocesses, a real `mlflow server`."""

from __future__ import annotations

import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.main import app

REPO = Path(__file__).resolve().parents[1]
KDSWEEP = [sys.executable, "-m", "cli.main"]
COMMANDS = ["run", "train", "teacher", "studies", "trials", "best", "pareto", "compare", "report", "ui"]


def kdsweep(*args: str, cwd: Path, timeout: float = 300, **popen) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "200"}
    return subprocess.run([*KDSWEEP, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout, **popen)


def command_of(hint: str) -> list[str]:
    """The argv of a printed command, without the leading `kdsweep`."""
    argv = shlex.split(hint)
    assert argv[0] == "kdsweep", hint
    return argv[1:]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """A one-trial digits sweep into a store with every option off its default: the store folder,
    an SQLite Optuna storage and a tracking database outside the store."""
    base = tmp_path_factory.mktemp("polish")
    (base / "elsewhere").mkdir()
    store, storage, tracking = base / "store", f"sqlite:///{base / 'optuna.db'}", f"sqlite:///{base / 'track.db'}"
    done = kdsweep("run", "--task", "digits", "--study", "pasted", "--n-trials", "1", "--repeats", "0",
                   "--store", str(store), "--storage", storage, "--tracking-uri", tracking, cwd=base)
    assert done.returncode == 0, done.stderr
    hints = {line.split(":", 1)[0]: line.split(":", 1)[1].strip()
             for line in done.stdout.splitlines()
             if line.startswith(("resume:", "trials:", "report:", "MLflow UI:", "dashboard:"))}
    return {"base": base, "store": store, "storage": storage, "tracking": tracking, "hints": hints}


def test_hints_carry_every_option_off_its_default(sweep):
    hints = sweep["hints"]
    assert set(hints) == {"resume", "trials", "report", "MLflow UI", "dashboard"}
    for name in ("resume", "trials", "report"):
        assert f"--store {sweep['store']}" in hints[name]
        assert f"--storage {sweep['storage']}" in hints[name]
        assert f"--tracking-uri {sweep['tracking']}" in hints[name]
    assert "--task digits" in hints["resume"]
    assert "--task" not in hints["trials"]


@pytest.mark.parametrize("name", ["trials", "pareto", "report"])
def test_each_query_hint_runs_as_printed_from_another_folder(sweep, name):
    line = sweep["hints"]["report" if name == "report" else "trials"]
    hint = line.split("|")[1 if name == "pareto" else 0]
    done = kdsweep(*command_of(hint), cwd=sweep["base"] / "elsewhere")
    assert done.returncode == 0, done.stderr
    assert not (sweep["base"] / "elsewhere" / "mlruns").exists()  # it read the sweep's store, not a new one


def test_the_resume_hint_resumes_the_study_when_pasted(sweep):
    # A resume starts a new budget (15 minutes by default): one more trial is enough here.
    done = kdsweep(*command_of(sweep["hints"]["resume"]), "--n-trials", "1", "--repeats", "0",
                   cwd=sweep["base"] / "elsewhere")
    assert done.returncode == 0, done.stderr
    trials = kdsweep(*command_of(sweep["hints"]["trials"].split("|")[0]), "--format", "json",
                     cwd=sweep["base"] / "elsewhere")
    assert trials.stdout.count('"number"') == 2


def test_the_dashboard_hint_names_the_study_storage(sweep):
    assert shlex.split(sweep["hints"]["dashboard"]) == ["optuna-dashboard", sweep["storage"]]


def test_a_resume_on_another_task_suggests_the_command_that_resumes(sweep):
    given = ["run", "--study", "pasted", "--store", str(sweep["store"]), "--storage", sweep["storage"],
             "--tracking-uri", sweep["tracking"]]
    done = kdsweep(*given, cwd=sweep["base"])  # the default task, mnist1d
    assert done.returncode == 2
    assert "was run on task 'digits', not 'mnist1d'" in done.stderr
    suggested = re.search(r"resume it with `([^`]+)`", " ".join(done.stderr.split()))[1]
    resumed = kdsweep(*command_of(suggested), "--n-trials", "1", "--repeats", "0", cwd=sweep["base"] / "elsewhere")
    assert resumed.returncode == 0, resumed.stderr


def test_new_experiments_open_on_the_training_runs(sweep):
    from mlflow import MlflowClient

    experiment = MlflowClient(tracking_uri=sweep["tracking"]).get_experiment_by_name("pasted")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"


# --- help ---------------------------------------------------------------------------------------

def _option_blocks(help_text: str) -> list[str]:
    """Each option's rows in Rich's help (its first row starts with --name, continuations do not)."""
    blocks: list[list[str]] = []
    for row in help_text.splitlines():
        inner = row.strip().strip("│").rstrip()
        if re.match(r"\s*(\*\s*)?--[\w-]+", inner):
            blocks.append([inner])
        elif blocks and inner.strip() and not inner.startswith(("╭", "╰")) and not row.startswith("╰"):
            blocks[-1].append(inner)
        if row.startswith(("╰", "╭")) and blocks and blocks[-1] is not None:
            blocks.append(None)  # a panel ends the option before it
    return [" ".join(" ".join(b).split()) for b in blocks if b]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_option_shows_its_default_or_is_a_flag_or_required(command):
    result = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "200", "TERM": "dumb"})
    assert result.exit_code == 0, result.output
    blocks = _option_blocks(result.output)
    assert blocks, result.output
    for block in blocks:
        name = block.split()[0] if not block.startswith("*") else block.split()[1]
        flag = "<bool>" in block.split()[:3] or name in ("--help",) or block.split()[1:2] == ["<bool>"]
        required = block.startswith("*") or "[required]" in block
        shown = "(default: " in block or "[default: " in block
        assert flag or required or shown, f"kdsweep {command} {name}: no default in its help: {block}"


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_help_has_no_stray_punctuation(command):
    result = CliRunner().invoke(app, [*([command] if command else []), "--help"], env={"COLUMNS": "200"})
    for row in result.output.splitlines():
        text = row.strip().strip("│").rstrip()
        assert not text.endswith(" ."), row
        assert "( )" not in text and "()" not in text.replace("splits()", ""), row


def test_train_help_defaults_are_train_configs():
    from cli.train import TRAIN_DEFAULTS
    from kdcore import TrainConfig

    assert TRAIN_DEFAULTS == {name: TrainConfig.model_fields[name].default for name in TRAIN_DEFAULTS}


def test_version_prints_the_installed_version():
    from importlib.metadata import version

    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"kdsweep {version('kdsweep')}"


# --- --debug ------------------------------------------------------------------------------------

def test_an_error_is_one_line_without_debug(tmp_path):
    done = kdsweep("trials", "nosuch", "--store", str(tmp_path), cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("error: ")


@pytest.mark.parametrize("how", ["flag", "env"])
def test_debug_shows_the_traceback_and_keeps_the_exit_code(tmp_path, how):
    args = ["--debug"] if how == "flag" else []
    env = {"KDSWEEP_DEBUG": "1"} if how == "env" else {}
    done = subprocess.run([*KDSWEEP, *args, "trials", "nosuch", "--store", str(tmp_path)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO), **env})
    assert done.returncode == 2
    assert "Traceback (most recent call last)" in done.stderr
    assert "ConfigError" in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("error: no Optuna storage")


# --- kdsweep ui ---------------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        rows = subprocess.run(["ps", "-o", "pid=", "--ppid", str(todo.pop())], capture_output=True, text=True)
        children = [int(p) for p in rows.stdout.split()]
        found += children
        todo += children
    return found


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_ui_stops_its_whole_server_tree_on_a_signal_in_the_background(sweep, sig):
    port = _free_port()
    # As a script's `kdsweep ui &` starts it: SIGINT ignored, so Ctrl-C's way out is closed.
    ui = subprocess.Popen([*KDSWEEP, *command_of(sweep["hints"]["MLflow UI"].split("(or:")[0]), "--port", str(port)],
                          cwd=sweep["base"] / "elsewhere", env={**os.environ, "PYTHONPATH": str(REPO)},
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    tree: list[int] = []
    try:
        line = ""
        deadline = time.monotonic() + 180
        while "MLflow UI:" not in line and time.monotonic() < deadline:
            line = ui.stdout.readline()
            assert line or ui.poll() is None, "kdsweep ui exited before it was ready"
        url = re.search(r"(http://\S+)", line)[1]
        assert re.fullmatch(rf"http://127\.0\.0\.1:{port}/#/experiments/\d+/runs\?workflowType=machine_learning", url)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=10) as answer:
            assert answer.status == 200
        tree = _descendants(ui.pid)
        assert tree, "mlflow server runs in a child process"
        started = time.monotonic()
        ui.send_signal(sig)
        assert ui.wait(timeout=15) == 0
        while any(_alive(pid) for pid in tree) and time.monotonic() - started < 15:
            time.sleep(0.1)
        assert [pid for pid in tree if _alive(pid)] == []
        with socket.socket() as probe:  # the port is free again (as a server binds it: TIME_WAIT allowed)
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(("127.0.0.1", port))
    finally:
        if ui.poll() is None:
            ui.kill()
        for pid in tree:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
