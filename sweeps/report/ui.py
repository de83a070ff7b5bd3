"""``kdsweep ui``: the MLflow UI (``mlflow server``) on a kdsweep store, in a child process.

The server reads the store's own database and serves the artifacts of its runs from their
recorded locations (``<store>/artifacts/<study>/...``), bound to 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from kdcore import ConfigError
from sweeps.tracking.store import Store

_START_TIMEOUT_S = 120.0


def server_command(store: Store, host: str = "127.0.0.1", port: int = 5000) -> list[str]:
    """The ``mlflow server`` command line for ``store``: its backend URI and artifact root, one worker."""
    executable = shutil.which("mlflow", path=str(Path(sys.executable).parent)) or shutil.which("mlflow")
    launcher = [executable] if executable else [sys.executable, "-m", "mlflow"]
    return [*launcher, "server", "--backend-store-uri", store.tracking_uri,
            "--default-artifact-root", store.artifact_root.as_uri(),
            "--host", host, "--port", str(port), "--workers", "1"]


def check_servable(store: Store, host: str, port: int) -> None:
    """ConfigError when the store is a remote server already, has no database yet, or the port is taken."""
    if store.tracking_uri.startswith(("http://", "https://", "databricks")):
        raise ConfigError(f"the tracking URI {store.tracking_uri} is a server already: open it in a browser")
    if store.embedded and not (store.root / "mlflow.db").exists():
        raise ConfigError(f"no MLflow store at {store.root}: run `kdsweep run` first, or point --store at one")
    store.check_database()  # damaged or empty: the server would fail on it, or write into it
    store.settle()  # a copied or moved store: the server must serve this folder's artifacts
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        # As the server binds: a closed server's connections in TIME_WAIT do not hold the port.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            raise ConfigError(f"cannot serve on {host}:{port} ({error.strerror}): pick another with --port") from None


class _Stopped(Exception):
    """Raised in the main thread by SIGTERM or SIGHUP: stop the server as Ctrl-C does."""


def _on_signal(signum: int, frame: object) -> None:
    raise _Stopped(signum)


def serve(*, store: str | Path | None = None, tracking_uri: str | None = None, host: str = "127.0.0.1",
          port: int = 5000, study: str | None = None, on_ready: Callable[[str], None] = print) -> None:
    """Run the MLflow UI on the store until Ctrl-C, SIGTERM or SIGHUP (or until the server exits),
    then stop the server and every process it started. ``on_ready`` gets the URL to open: the
    study's runs table in the model-training view, or the experiment list."""
    paths = Store.resolve(store, tracking_uri)
    check_servable(paths, host, port)
    base = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"
    url = f"{base}{experiment_path(paths, study)}" if study else base
    # A script's background job ignores SIGINT, and a closed terminal sends SIGHUP: all three stop it.
    # (Python lets only the main thread set handlers: from another thread, the caller stops it.)
    handled = (signal.SIGTERM, signal.SIGHUP) if threading.current_thread() is threading.main_thread() else ()
    previous = {sig: signal.signal(sig, _on_signal) for sig in handled}
    with tempfile.TemporaryFile(mode="w+") as log:
        # A session (process group) of its own: the server's workers go with it, and we decide when it stops.
        process = subprocess.Popen(server_command(paths, host, port), stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        try:
            _wait_healthy(process, base, log)
            on_ready(url)
            process.wait()
            raise ConfigError(f"mlflow server exited with code {process.returncode}: {_last_line(log)}")
        except (KeyboardInterrupt, _Stopped):
            pass
        finally:
            for sig in handled:  # a second signal must not cut the stop short
                signal.signal(sig, signal.SIG_IGN)
            stop(process)
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def experiment_path(store: Store, study: str) -> str:
    """The UI's path to ``study``'s runs table in the model-training view (MLflow 3 would open its
    GenAI overview otherwise); ConfigError when the store has no such study."""
    found = store.client().get_experiment_by_name(study)
    if found is None:
        raise ConfigError(f"no study '{study}' in the MLflow store {store.root}: `kdsweep studies` lists them; "
                          "check --store and --tracking-uri")
    return f"/#/experiments/{found.experiment_id}/runs?workflowType=machine_learning"


def _wait_healthy(process: subprocess.Popen, url: str, log) -> None:
    deadline = time.monotonic() + _START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ConfigError(f"mlflow server exited with code {process.returncode}: {_last_line(log)}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.25)
    raise ConfigError(f"mlflow server did not answer at {url} within {_START_TIMEOUT_S:.0f} s: {_last_line(log)}")


def _last_line(log) -> str:
    log.seek(0)
    lines = [line.strip() for line in log.read().splitlines() if line.strip()]
    return lines[-1] if lines else "no output"


def stop(process: subprocess.Popen, grace_s: float = 10.0) -> None:
    """Stop the server and its workers (its process group, and any descendant that left it),
    forcefully after ``grace_s``."""
    if process.poll() is not None:
        return
    tree = _descendants(process.pid)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            break
        try:
            process.wait(timeout=grace_s)
            break
        except subprocess.TimeoutExpired:
            continue
    for pid in tree:  # a worker that started a session of its own outlives its group
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` now (Linux /proc; nothing elsewhere)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").glob("[0-9]*/stat"):
        try:
            stat = entry.read_text()
        except OSError:
            continue
        parent = int(stat[stat.rindex(")") + 2:].split()[1])
        children.setdefault(parent, []).append(int(entry.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found
