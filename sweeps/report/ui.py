"""``kdsweep ui``: the MLflow UI (``mlflow server``) on a kdsweep store, in a child process.

The server reads the store's own database and serves the artifacts of its runs from their
recorded locations (``<store>/artifacts/<study>/...``), bound to 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
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
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        try:
            probe.bind((host, port))
        except OSError as error:
            raise ConfigError(f"cannot serve on {host}:{port} ({error.strerror}): pick another with --port") from None


def serve(*, store: str | Path | None = None, tracking_uri: str | None = None, host: str = "127.0.0.1",
          port: int = 5000, on_ready: Callable[[str], None] = print) -> None:
    """Run the MLflow UI on the store until Ctrl-C (or until the server exits), then stop it."""
    paths = Store.resolve(store, tracking_uri)
    check_servable(paths, host, port)
    url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"
    with tempfile.TemporaryFile(mode="w+") as log:
        # A session of its own: the server's workers go with it, and we decide when it stops.
        process = subprocess.Popen(server_command(paths, host, port), stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        try:
            _wait_healthy(process, url, log)
            on_ready(url)
            process.wait()
            raise ConfigError(f"mlflow server exited with code {process.returncode}: {_last_line(log)}")
        except KeyboardInterrupt:
            pass
        finally:
            stop(process)


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
    """Stop the server and its workers (its process group), forcefully after ``grace_s``."""
    if process.poll() is not None:
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=grace_s)
            return
        except subprocess.TimeoutExpired:
            continue
