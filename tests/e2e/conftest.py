"""Real processes: django-q2 clusters (and, from issue 3, daphne) on the test database.

The test process and its child processes share pytest-django's test database, so
these tests use committed data (`transactional_db`) and stop their children before
the database is flushed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import pytest
from django.db import connection

from mash_api.management.commands.serve import listen_endpoint
from mash_runtime.host import set_host

REPO = Path(__file__).resolve().parents[2]
ENGINE_HOST = "tests.apps.engine_host:build_host"


def database_url() -> str:
    s = connection.settings_dict
    if s["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{Path(s['NAME']).resolve()}"
    auth = s["USER"] + (f":{s['PASSWORD']}" if s.get("PASSWORD") else "")
    return f"postgres://{auth}@{s['HOST'] or '127.0.0.1'}:{s['PORT'] or 5432}/{s['NAME']}"


def wait_for(predicate: Callable[[], object], timeout: float = 30.0, interval: float = 0.05, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return False
    return state != "Z"


class Cluster:
    """One `manage.py qcluster` process group."""

    def __init__(self, env: dict[str, str], log_path: Path):
        self.env = env
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None
        self._terminated = False

    def start(self) -> "Cluster":
        self._terminated = False
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "manage.py", "qcluster"], cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return self

    def terminate(self) -> None:
        """SIGTERM to the cluster's main process, once, without waiting (`stop` waits), so
        that several processes shut down side by side."""
        if self.proc is not None and self.proc.poll() is None and not self._terminated:
            self._terminated = True
            self.proc.send_signal(signal.SIGTERM)

    def stop(self, timeout: float = 15.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        # The cluster's main process shuts its sentinel and workers down itself; signalling
        # the whole group at once leaves it waiting on children that are already gone.
        self.terminate()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)
        # Leftover children (a worker stuck in a tool) must not outlive the test.
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@pytest.fixture
def cluster_env(tmp_path, settings) -> dict[str, str]:
    settings.MASH_HOST_APP = ENGINE_HOST
    set_host(None)
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "MASH_DATABASE_URL")}
    env.update(
        {
            "DATABASE_URL": database_url(),
            "MASH_HOST_APP": ENGINE_HOST,
            "MASH_DATA_DIR": str(settings.DATA_DIR),
            "MASH_WORKERS": "2",
            "MASH_LEASE_SECONDS": "5",
            "MASH_QUEUE_POLL": "0.05",
            "MASH_TEST_WORKDIR": str(tmp_path),
            "PYTHONPATH": str(REPO),
        }
    )
    return env


@pytest.fixture
def clusters(transactional_db, cluster_env, tmp_path):
    """Start clusters with `clusters.start()`; all are stopped before the database is flushed."""

    started: list[Cluster] = []

    class Clusters:
        env = cluster_env

        def start(self, **extra_env: str) -> Cluster:
            """A cluster on `env`, with `extra_env` on top (MASH_WORKERS=1, ...)."""
            cluster = Cluster({**cluster_env, **extra_env}, tmp_path / f"qcluster-{len(started)}.log").start()
            started.append(cluster)
            return cluster

        def terminate(self) -> None:
            """SIGTERM to every cluster started, without waiting (the teardown waits)."""
            for cluster in started:
                cluster.terminate()

    clusters = Clusters()
    yield clusters
    clusters.terminate()
    for cluster in started:
        cluster.stop()
    set_host(None)


# -- web processes (daphne) --------------------------------------------------------------


def free_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class WebServer:
    """One real `daphne` process serving `mash_project.asgi:application` on a loopback port."""

    def __init__(self, env: dict[str, str], log_path: Path, api_key: str = ""):
        self.env = env
        self.log_path = log_path
        self.api_key = api_key
        self.port = 0
        self.proc: subprocess.Popen | None = None
        self._launches = 0
        self._terminated = False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def launch(self) -> "WebServer":
        """Start the process without waiting (see `wait_ready`), so several can boot at once."""
        self._launches += 1
        self._terminated = False
        self.port = free_port()
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "daphne", "-e", listen_endpoint("127.0.0.1", self.port),
                 "mash_project.asgi:application"],
                cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        return self

    def wait_ready(self, timeout: float = 90.0) -> "WebServer":
        """Until `GET /api/v1/health` answers 200; relaunches on another port if daphne exited
        (a port taken between choosing and binding)."""
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                if self._launches >= 3:
                    break
                self.launch()
                continue
            try:
                response = httpx.get(f"{self.url}/api/v1/health", headers=self.headers, timeout=10)
            except httpx.HTTPError:
                time.sleep(0.1)
                continue
            if response.status_code != 200:
                self.stop()
                raise AssertionError(f"/api/v1/health answered {response.status_code}: {response.text[:500]}")
            return self
        self.stop()
        raise AssertionError(f"daphne did not become ready within {timeout}s:\n{self.log()[-3000:]}")

    def start(self, timeout: float = 90.0) -> "WebServer":
        return self.launch().wait_ready(timeout)

    def terminate(self) -> None:
        """SIGTERM, once, without waiting (`stop` waits), so that several processes shut
        down side by side."""
        if self.proc is not None and self.proc.poll() is None and not self._terminated:
            self._terminated = True
            self.proc.send_signal(signal.SIGTERM)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL for the whole process group."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.terminate()
            try:
                self.proc.wait(timeout)
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


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    # Lets fixtures see whether their test failed (to show the processes' logs then).
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"_e2e_report_{report.when}", report)


@pytest.fixture
def web_servers(clusters, tmp_path, request):
    """Real daphne processes on the clusters' environment (`clusters.env`) and test database.

    `web_servers.start(**extra_env)` starts one and waits for `/api/v1/health`;
    `web_servers.start_many(n, **extra_env)` boots n side by side. `MASH_API_KEY=...` in
    `extra_env` makes that server require the key (its `headers` carry it). Depending on
    `clusters` means every server is stopped (SIGTERM, then SIGKILL) before the database is
    flushed; the servers and the clusters get their SIGTERM at once (each takes a second or
    so to shut down), then the servers are waited for, then the clusters.
    """

    started: list[WebServer] = []

    class WebServers:
        env = clusters.env

        def launch(self, **extra_env: str) -> WebServer:
            server = WebServer({**clusters.env, **extra_env}, tmp_path / f"daphne-{len(started)}.log",
                               api_key=extra_env.get("MASH_API_KEY", ""))
            started.append(server)
            return server.launch()

        def start(self, **extra_env: str) -> WebServer:
            return self.launch(**extra_env).wait_ready()

        def start_many(self, count: int, **extra_env: str) -> list[WebServer]:
            return [server.wait_ready() for server in [self.launch(**extra_env) for _ in range(count)]]

    yield WebServers()
    for server in started:
        server.terminate()
    clusters.terminate()
    for server in reversed(started):
        server.stop()
    report = getattr(request.node, "_e2e_report_call", None)
    if report is not None and report.failed:
        for log in sorted(tmp_path.glob("*.log")):
            print(f"----- {log.name} (last 4000 chars) -----\n{log.read_text(errors='replace')[-4000:]}")


# -- SSE over real sockets ---------------------------------------------------------------------


class SSEFrame:
    """One parsed SSE block: an event (`id`, `event`, `data`) or a `: comment`."""

    def __init__(self, raw: str):
        self.raw = raw
        self.id: int | None = None
        self.event: str | None = None
        self.data = None
        self.comment: str | None = None
        lines = raw.split("\n")
        if all(line.startswith(":") for line in lines):
            self.comment = raw
            return
        data_lines = []
        for line in lines:
            name, _, value = line.partition(": ")
            if name == "id":
                self.id = int(value)
            elif name == "event":
                self.event = value
            elif name == "data":
                data_lines.append(value)
            else:
                raise AssertionError(f"unexpected SSE line {line!r} in {raw!r}")
        assert len(data_lines) == 1, f"one data line per frame: {raw!r}"
        import json

        self.data = json.loads(data_lines[0])

    @property
    def key(self) -> tuple:
        import json

        return (self.id, self.event, json.dumps(self.data, sort_keys=True))

    def __repr__(self) -> str:
        return f"SSEFrame({self.id}, {self.event or self.comment!r})"


SSE_DEADLINE = 120.0


def sse_frames(response, *, comments: bool = False, deadline: float = SSE_DEADLINE):
    """Frames of a streaming httpx response, parsed from the raw bytes as they arrive.

    Checks the wire framing on the way: `\\n` line endings, blocks ended by a blank line,
    ASCII only (the JSON is ASCII-escaped), no bytes left over when the server closes.
    Keep-alives would keep a stuck stream open forever: after `deadline` seconds the
    reader fails instead (checked whenever bytes arrive, so at least every 15 s).
    """
    buffer = b""
    give_up = time.monotonic() + deadline
    for chunk in response.iter_bytes():
        if time.monotonic() > give_up:
            raise AssertionError(f"SSE stream {response.url} still open after {deadline}s (last bytes {buffer[-200:]!r})")
        buffer += chunk
        while b"\n\n" in buffer:
            block, buffer = buffer.split(b"\n\n", 1)
            assert b"\r" not in block, f"SSE lines end with \\n only: {block!r}"
            frame = SSEFrame(block.decode("ascii"))
            if frame.comment is None or comments:
                yield frame
    assert buffer == b"", f"bytes after the last complete frame: {buffer!r}"


TERMINAL_EVENTS = ("request.completed", "request.error")
