"""Live servers for the client tests: a real daphne process (plus a django-q2 cluster) on
the pytest-django test database, and helpers to run the `mash` commands against it.

The server processes are stopped before the database is flushed: `live_servers`
depends on `clusters` (tests/e2e/conftest.py), so it is torn down first.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import cluster_env, clusters  # noqa: F401  (fixtures used here)

REPO = Path(__file__).resolve().parents[2]
STARTUP_SECONDS = 60.0


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LiveServer:
    """One `daphne` process serving `mash_project.asgi:application` on a loopback port."""

    def __init__(self, env: dict[str, str], log_path: Path, api_key: str = ""):
        self.env = env
        self.log_path = log_path
        self.api_key = api_key
        self.port = 0
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def start(self) -> "LiveServer":
        for _attempt in range(3):  # a port taken between choosing and binding: choose again
            self.port = _free_port()
            with open(self.log_path, "ab") as log:
                self.proc = subprocess.Popen(
                    [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(self.port),
                     "mash_project.asgi:application"],
                    cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                )
            if self._wait_healthy():
                return self
        raise AssertionError(f"daphne did not start:\n{self.log()[-3000:]}")

    def _wait_healthy(self) -> bool:
        deadline = time.monotonic() + STARTUP_SECONDS
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                response = httpx.get(f"{self.url}/api/v1/health", headers=self.headers, timeout=5)
            except httpx.HTTPError:
                time.sleep(0.1)
                continue
            assert response.status_code == 200, response.text[:500]
            return True
        self.stop()
        raise AssertionError(f"daphne not healthy after {STARTUP_SECONDS}s:\n{self.log()[-3000:]}")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            pass

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@pytest.fixture
def live_servers(clusters, tmp_path):  # noqa: F811
    """`live_servers.start(api_key="", worker=True, **env)`: a daphne process (and, with
    `worker`, a qcluster) on the test database; `env` is added to both processes."""

    started: list[LiveServer] = []

    class Servers:
        def start(self, *, api_key: str = "", worker: bool = True, **extra_env: str) -> LiveServer:
            clusters.env.update(extra_env)  # the same dict the clusters start with
            if worker:
                clusters.start()
            env = dict(clusters.env)
            if api_key:
                env["MASH_API_KEY"] = api_key
            server = LiveServer(env, tmp_path / f"daphne-{len(started)}.log", api_key=api_key)
            started.append(server)
            return server.start()

    yield Servers()
    for server in reversed(started):
        server.stop()


@pytest.fixture
def mash_server(live_servers) -> LiveServer:
    """The scripted engine host (tests/apps/engine_host.py), open (no API key), with a worker."""
    return live_servers.start()


@pytest.fixture
def cli_home(tmp_path, monkeypatch) -> Path:
    """A fresh HOME (so ~/.mash/cli.json is the test's own) and no client settings from outside."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("COLUMNS", "200")
    for name in ("MASH_API_BASE_URL", "MASH_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    return home


@dataclass
class Result:
    code: int
    out: str
    err: str


@pytest.fixture
def mash(cli_home, capsys):
    """Run `mash ARGS...` in this process (the console script's `main`); returns a Result."""
    from mash_project.cli import main

    def run(*args: str) -> Result:
        capsys.readouterr()
        try:
            main(list(args))
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return run


def client_env(home: Path, **extra: str) -> dict[str, str]:
    """The environment of a client subprocess: a private HOME, nothing client-related inherited."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("MASH_API_BASE_URL", "MASH_API_KEY", "DATABASE_URL", "MASH_DATABASE_URL")}
    env.update({"HOME": str(home), "PYTHONPATH": str(REPO), "COLUMNS": "200", "MASH_DATA_DIR": str(home / "data"),
                "PROMPT_TOOLKIT_NO_CPR": "1", "TERM": "xterm-256color"})
    env.update(extra)
    return env
