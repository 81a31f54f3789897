"""Live servers for the client tests: a real daphne process (plus a django-q2 cluster) on
the pytest-django test database, and helpers to run the `mash` commands against it.

The server processes are stopped before the database is flushed: `live_servers`
depends on `clusters` (tests/e2e/conftest.py), so it is torn down first.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e.conftest import WebServer, cluster_env, clusters  # noqa: F401  (fixtures used here)

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def live_servers(clusters, tmp_path):  # noqa: F811
    """`live_servers.start(api_key="", worker=True, **env)`: a daphne process (and, with
    `worker`, a qcluster) on the test database; `env` is added to both processes."""

    started: list[WebServer] = []

    class Servers:
        def start(self, *, api_key: str = "", worker: bool = True, **extra_env: str) -> WebServer:
            clusters.env.update(extra_env)  # the same dict the clusters start with
            if worker:
                clusters.start()
            env = dict(clusters.env)
            if api_key:
                env["MASH_API_KEY"] = api_key
            server = WebServer(env, tmp_path / f"daphne-{len(started)}.log", api_key=api_key)
            started.append(server)
            return server.start()

    yield Servers()
    for server in started:  # servers and clusters shut down at once (see tests/e2e `web_servers`)
        server.terminate()
    clusters.terminate()
    for server in reversed(started):
        server.stop()


@pytest.fixture
def mash_server(live_servers) -> WebServer:
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
