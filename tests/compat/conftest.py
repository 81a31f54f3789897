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
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import ENGINE_HOST, REPO, cluster_env, clusters, wait_for  # noqa: F401

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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class MashServer:
    """A daphne process serving the project on 127.0.0.1, plus the qclusters behind it."""

    port: int
    api_key: str | None
    log_path: Path
    proc: subprocess.Popen | None = None
    env: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def client(self, **kwargs) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers=self.headers, timeout=kwargs.pop("timeout", 30.0), **kwargs)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def start(self) -> "MashServer":
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(self.port), "mash_project.asgi:application"],
            cwd=REPO, env=self.env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()

        def healthy() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"daphne exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
            try:
                return httpx.get(f"{self.url}/api/v1/health", headers=self.headers, timeout=2.0).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(healthy, timeout=60, interval=0.1, what=f"daphne on port {self.port} to answer /api/v1/health")
        return self

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(5)

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
    server = MashServer(port=free_port(), api_key=API_KEY, log_path=tmp_path / "daphne.log", env=env)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        if cluster.proc is not None and cluster.proc.poll() is not None:
            print(f"qcluster exited early:\n{cluster.log()[-3000:]}")
