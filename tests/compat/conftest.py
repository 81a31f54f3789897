"""Compatibility fixtures: the upstream `mash` 0.4.2 client in its own virtualenv, and a
real server (daphne + one qcluster on pytest-django's test database) for it to talk to.

The upstream client lives in a separate virtualenv, created once per machine and reused:
`${MASH_UPSTREAM_VENV:-~/.cache/mash-tests/mashpy-0.4.2}`. Nothing of it is imported into
this process; tests run its `mash` script or its python as subprocesses.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import ENGINE_HOST, REPO, WebServer, cluster_env, clusters, wait_for  # noqa: F401

UPSTREAM_SPEC = ("mashpy==0.4.2", "python-dotenv")
API_KEY = "secret"


# -- the upstream client's virtualenv --------------------------------------------------------


def upstream_venv_path() -> Path:
    raw = os.environ.get("MASH_UPSTREAM_VENV") or "~/.cache/mash-tests/mashpy-0.4.2"
    return Path(raw).expanduser()


def _quiet_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env.update({"PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1"})
    return env


def _run_quiet(args: list[str], timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(args, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout,
                          env=_quiet_env())


def _create_upstream_venv(venv: Path) -> str | None:
    """Create the venv and install the client; the reason on failure, else None."""
    python3 = shutil.which("python3") or sys.executable
    steps = [
        [python3, "-m", "venv", str(venv)],
        [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", *UPSTREAM_SPEC],
    ]
    for args in steps:
        try:
            done = _run_quiet(args, timeout=600)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"{' '.join(args[:4])}: {exc}"
        if done.returncode != 0:
            lines = (done.stderr or done.stdout).strip().splitlines()
            tail = [line for line in lines if line.startswith("ERROR")][-2:] or lines[-3:]
            return f"{' '.join(args[:4])} exited {done.returncode}: {' | '.join(tail)}"
    if not (venv / "bin" / "mash").exists():
        return f"{venv}/bin/mash missing after installing {' '.join(UPSTREAM_SPEC)}"
    return None


@dataclass(frozen=True)
class UpstreamVenv:
    path: Path

    @property
    def mash(self) -> Path:
        return self.path / "bin" / "mash"

    @property
    def python(self) -> Path:
        return self.path / "bin" / "python"


@pytest.fixture(scope="session")
def upstream_venv() -> UpstreamVenv:
    """The upstream client's virtualenv: created when `<venv>/bin/mash` is missing, else reused."""
    venv = upstream_venv_path()
    if not (venv / "bin" / "mash").exists():
        venv.parent.mkdir(parents=True, exist_ok=True)
        # One creator at a time per machine (parallel pytest runs share the cache).
        with open(venv.parent / f".{venv.name}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not (venv / "bin" / "mash").exists():
                shutil.rmtree(venv, ignore_errors=True)
                reason = _create_upstream_venv(venv)
                if reason is not None:
                    shutil.rmtree(venv, ignore_errors=True)
                    pytest.skip(f"cannot install the upstream client ({' '.join(UPSTREAM_SPEC)}): {reason}")
    return UpstreamVenv(venv)


# -- a real server ----------------------------------------------------------------------------


class MashServer(WebServer):
    """The project's daphne process (tests/e2e/conftest.py) with an HTTP client at hand."""

    def client(self, **kwargs) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers=self.headers, timeout=kwargs.pop("timeout", 30.0), **kwargs)

    def wait_terminal(self, agent_id: str, request_id: str, timeout: float = 30.0) -> dict:
        """Poll the status route until the request is completed, failed or cancelled."""
        with self.client() as http:
            def done():
                body = http.get(f"/api/v1/agent/{agent_id}/request/{request_id}/status").json()["data"]
                return body if body["status"] in ("completed", "failed", "cancelled") else None

            return wait_for(done, timeout=timeout, interval=0.1, what=f"request {request_id} to finish")


@pytest.fixture
def mash_host_app() -> str:
    """The host app the server processes load; parametrize this name to serve another."""
    return ENGINE_HOST


@pytest.fixture
def mash_server(clusters, tmp_path, mash_host_app):  # noqa: F811
    """daphne + one qcluster on the test database with `MASH_API_KEY=secret`.

    Depends on `clusters`, so this teardown (daphne) runs before the clusters stop, and
    both before pytest-django flushes the database.
    """
    clusters.env["MASH_HOST_APP"] = mash_host_app
    cluster = clusters.start()
    env = dict(clusters.env)
    env["MASH_API_KEY"] = API_KEY
    server = MashServer(env, tmp_path / "daphne.log", api_key=API_KEY)
    try:
        server.start()
        yield server
    finally:
        exited_early = cluster.proc is not None and cluster.proc.poll() is not None
        server.terminate()
        clusters.terminate()  # both shut down at once; the clusters' teardown waits for it
        server.stop()
        if exited_early:
            print(f"qcluster exited early:\n{cluster.log()[-3000:]}")
