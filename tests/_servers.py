"""Real servers for the scale-out tests: a throwaway PostgreSQL cluster (Debian's binaries) and an
`mlflow server` on it with proxied artifacts, both on 127.0.0.1, on free ports, stopped at the end."""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

_START_S = 120
USER = "kdsweep"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def postgres_bin() -> Path | None:
    """The folder of initdb and pg_ctl: Debian keeps them under /usr/lib/postgresql/<version>/bin."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


class Postgres:
    """A PostgreSQL cluster in a temp folder: trust authentication for USER, 127.0.0.1 only. As root
    (PostgreSQL refuses to run as root) its programs run as the `postgres` user."""

    def __init__(self) -> None:
        binaries = postgres_bin()
        if binaries is None:
            pytest.skip("PostgreSQL is not installed: apt-get install postgresql (.ci/run does)")
        self.bin = binaries
        self.port = free_port()
        # Not under pytest's tmp folder: that is private to root, and the server runs as postgres.
        self.root = Path(tempfile.mkdtemp(prefix="kdsweep-pg-"))
        self.data = self.root / "data"
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")

    def _run(self, *command: str) -> None:
        prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        result = subprocess.run([*prefix, *command], capture_output=True, text=True, timeout=_START_S)
        assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stdout}\n{result.stderr}"

    def start(self) -> Postgres:
        self._run(str(self.bin / "initdb"), "-D", str(self.data), "-U", USER, "--auth=trust", "--no-sync",
                  "-E", "UTF8", "--locale=C")
        options = f"-h 127.0.0.1 -p {self.port} -k {self.data} -c fsync=off -c max_connections=200"
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.root / "server.log"), "-w",
                  "-t", str(_START_S), "-o", options, "start")
        return self

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://{USER}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        import psycopg

        with psycopg.connect(f"host=127.0.0.1 port={self.port} user={USER} dbname=postgres", autocommit=True) as db:
            db.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        with contextlib.suppress(AssertionError, subprocess.TimeoutExpired):
            self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.root, ignore_errors=True)


class MlflowServer:
    """`mlflow server` with a PostgreSQL backend store and proxied artifacts (--serve-artifacts)."""

    def __init__(self, backend_uri: str, artifacts: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        executable = shutil.which("mlflow", path=str(Path(sys.executable).parent)) or "mlflow"
        self.log = open(artifacts.parent / f"mlflow-server-{self.port}.log", "w")
        env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
        self.process = subprocess.Popen(
            [executable, "server", "--backend-store-uri", backend_uri, "--serve-artifacts",
             "--artifacts-destination", artifacts.as_uri(), "--host", "127.0.0.1", "--port", str(self.port),
             "--workers", "1"],
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True, env=env)

    def wait_ready(self) -> MlflowServer:
        deadline = time.monotonic() + _START_S
        while True:
            assert self.process.poll() is None, f"mlflow server exited: {Path(self.log.name).read_text()[-3000:]}"
            try:
                urllib.request.urlopen(f"{self.url}/health", timeout=2).close()
                return self
            except OSError:
                assert time.monotonic() < deadline, "mlflow server did not start"
                time.sleep(0.5)

    def stop(self) -> None:
        # The server runs in a session of its own (uvicorn and its job workers): stop the whole group.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        with contextlib.suppress(ProcessLookupError):  # job workers the leader left behind
            os.killpg(self.process.pid, signal.SIGKILL)
        self.log.close()
