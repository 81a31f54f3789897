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

    def start(self) -> "Cluster":
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "manage.py", "qcluster"], cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return self

    def stop(self, timeout: float = 15.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        # The cluster's main process shuts its sentinel and workers down itself; signalling
        # the whole group at once leaves it waiting on children that are already gone.
        self.proc.send_signal(signal.SIGTERM)
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

        def start(self) -> Cluster:
            cluster = Cluster(cluster_env, tmp_path / f"qcluster-{len(started)}.log").start()
            started.append(cluster)
            return cluster

    yield Clusters()
    for cluster in started:
        cluster.stop()
    set_host(None)
