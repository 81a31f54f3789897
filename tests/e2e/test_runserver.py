"""`manage.py runserver` is daphne's (ASGI: SSE and WebSockets work), and a process that
does not serve HTTP (a worker, a management command) does not load Twisted."""

import subprocess
import sys

import httpx

from .conftest import REPO, WebServer, free_port


class RunServer(WebServer):
    def launch(self) -> "RunServer":
        self._launches += 1
        self.port = free_port()
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "manage.py", "runserver", "--noreload", f"127.0.0.1:{self.port}"],
                cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        return self


def test_runserver_serves_asgi_through_daphne(transactional_db, cluster_env, tmp_path):
    server = RunServer(cluster_env, tmp_path / "runserver.log").start()
    try:
        health = httpx.get(f"{server.url}/api/v1/health", timeout=10)
        assert health.status_code == 200
        assert health.json()["data"]["status"] == "ok"
        # A stream answers through the ASGI path (404 envelope for an unknown request).
        missing = httpx.get(f"{server.url}/api/v1/agent/nobody/request/nope/events", timeout=10)
        assert missing.status_code == 404
        assert missing.json()["error"]["code"]
    finally:
        server.stop()
    assert "ASGI/Daphne" in server.log()


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
