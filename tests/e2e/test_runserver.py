"""`manage.py runserver` is daphne's (ASGI: SSE and WebSockets work) with a worker beside
it, so a request completes; and a process that does not serve HTTP (a worker, a
management command) does not load Twisted."""

import json
import subprocess
import sys

import httpx

from .conftest import REPO, WebServer, free_port, wait_for


class RunServer(WebServer):
    def __init__(self, *args, extra=(), **kwargs):
        super().__init__(*args, **kwargs)
        self.extra = list(extra)

    def launch(self) -> "RunServer":
        self._launches += 1
        self.port = free_port()
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "manage.py", "runserver", "--noreload", *self.extra, f"127.0.0.1:{self.port}"],
                cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        return self


def submit_and_wait(server) -> dict:
    body = {"message": json.dumps({"script": ["served by runserver"]})}
    rid = httpx.post(f"{server.url}/api/v1/agent/primary/request", json=body, timeout=30).json()["data"]["request_id"]
    with httpx.stream("GET", f"{server.url}/api/v1/agent/primary/request/{rid}/events", timeout=60) as response:
        assert response.status_code == 200
        frames = [line[len("event: "):] for line in response.iter_lines() if line.startswith("event: ")]
    return {"rid": rid, "frames": frames}


def test_runserver_serves_asgi_and_runs_a_worker_so_requests_complete(transactional_db, cluster_env, tmp_path):
    server = RunServer(cluster_env, tmp_path / "runserver.log").start()
    try:
        result = submit_and_wait(server)
        assert result["frames"][0] == "request.accepted" and result["frames"][-1] == "request.completed", result
        health = httpx.get(f"{server.url}/api/v1/health", timeout=10).json()["data"]
        assert health["workers"]["live"], health["workers"]
    finally:
        server.stop(timeout=30)
    log = server.log()
    assert "ASGI/Daphne" in log and "Starting worker" in log


def test_runserver_noworker_leaves_requests_queued(transactional_db, cluster_env, tmp_path):
    server = RunServer(cluster_env, tmp_path / "runserver.log", extra=["--noworker"]).start()
    try:
        body = {"message": json.dumps({"script": ["never run here"]})}
        rid = httpx.post(f"{server.url}/api/v1/agent/primary/request", json=body, timeout=30).json()["data"]["request_id"]
        status = httpx.get(f"{server.url}/api/v1/agent/primary/request/{rid}/status", timeout=10).json()["data"]
        assert status["status"] == "queued", status
    finally:
        server.stop()
    assert "Starting worker" not in server.log()


def test_processes_that_do_not_serve_http_do_not_import_twisted(cluster_env):
    code = (
        "import sys, django; django.setup();"
        "from django.core.management import get_commands;"
        "print(sorted(m for m in ('twisted', 'daphne', 'autobahn') if m in sys.modules), get_commands()['runserver'])"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                         env={**cluster_env, "DJANGO_SETTINGS_MODULE": "mash_project.settings"}, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["[]", "mash_project"]


def test_runserver_stopped_with_sigterm_stops_its_worker(transactional_db, cluster_env, tmp_path):
    import os
    import signal

    server = RunServer(cluster_env, tmp_path / "runserver.log").start()
    children = subprocess.run(["pgrep", "-P", str(server.proc.pid)], capture_output=True, text=True).stdout.split()
    assert children, "runserver started no worker"
    server.proc.send_signal(signal.SIGTERM)
    server.proc.wait(60)

    def alive(pid: str) -> bool:
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return False
        return True

    wait_for(lambda: not any(alive(pid) for pid in children), timeout=60, what="the worker to stop with runserver")
    server.stop()
