"""Workflows across real processes: a worker killed mid-task, and a whole-server restart."""

import json
import os
import signal
import subprocess
import sys
from contextlib import contextmanager
from urllib.parse import quote

import httpx
import pytest

from tests.e2e.conftest import wait_for
from tests.e2e.test_serve import clean_env, free_port

pytestmark = pytest.mark.e2e
HOST_APP = "tests.apps.workflow_host:build_host"


@contextmanager
def serving(data_dir, port):
    proc = subprocess.Popen(
        [sys.executable, "-m", "mash_project.cli", "host", "serve", "--port", str(port), "--host-app", HOST_APP],
        cwd=data_dir, env=clean_env(MASH_DATA_DIR=str(data_dir / ".mash"), MASH_LEASE_SECONDS="5"),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    base = f"http://127.0.0.1:{port}"

    def healthy():
        try:
            return httpx.get(f"{base}/api/v1/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            assert proc.poll() is None, proc.stdout.read()
            return False

    try:
        wait_for(healthy, timeout=60, interval=0.2, what="serve")
        yield base, proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.communicate(timeout=40)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()


def stream_run(base, workflow_id, run_id):
    frames = []
    url = f"{base}/api/v1/workflow/{workflow_id}/runs/{quote(run_id, safe='')}/events"
    with httpx.stream("GET", url, timeout=httpx.Timeout(90, read=90)) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("id: "):
                frames.append({"id": int(line[4:])})
            elif line.startswith("event: "):
                frames[-1]["event"] = line[7:]
            elif line.startswith("data: "):
                frames[-1]["data"] = json.loads(line[6:])
    return frames


def test_a_run_survives_its_worker_killed_mid_task(tmp_path):
    out, pid_file = tmp_path / "slow.txt", tmp_path / "worker.pid"
    with serving(tmp_path, free_port()) as (base, _):
        started = httpx.post(f"{base}/api/v1/workflow/slow/run",
                             json={"input": {"path": str(out), "sleep": 2, "pid_file": str(pid_file)}}).json()["data"]
        worker = int(wait_for(lambda: pid_file.exists() and pid_file.read_text(), timeout=60, what="task tool"))
        os.kill(worker, signal.SIGKILL)
        frames = stream_run(base, "slow", started["run_id"])
        run = httpx.get(f"{base}/api/v1/workflow/slow/runs/{quote(started['run_id'], safe='')}").json()["data"]
    assert run["status"] == "completed", run
    assert run["output"]["task_states"]["count"] == {"count": 1}
    finals = [f for f in frames if f["event"] in ("workflow.completed", "workflow.error")]
    assert len(finals) == 1 and frames[-1]["event"] == "workflow.completed"
    assert [f["id"] for f in frames] == list(range(1, len(frames) + 1))
    assert out.read_text().count("slow") >= 1


def test_published_skills_and_workflows_survive_a_restart(tmp_path):
    port = free_port()
    with serving(tmp_path, port) as (base, _):
        assert httpx.post(f"{base}/api/v1/agent/counter/skill",
                          json={"type": "inline", "name": "tally", "content": "Count carefully."}).status_code == 200
        published = {"workflow_id": "recount", "tasks": [{"task_id": "count", "agent_id": "counter",
                     "structured_output": {"type": "object", "properties": {"count": {"type": "integer"}},
                                           "required": ["count"]}}], "task_message": {"skill_name": "tally"}}
        assert httpx.post(f"{base}/api/v1/agent/primary/workflow", json=published).status_code == 200
    with serving(tmp_path, port) as (base, _):
        listed = [w["workflow_id"] for w in httpx.get(f"{base}/api/v1/workflow").json()["data"]["workflows"]]
        assert "recount" in listed and "count-and-report" in listed
        run_id = httpx.post(f"{base}/api/v1/workflow/recount/run", json={"input": {"step": 2}}).json()["data"]["run_id"]
        frames = stream_run(base, "recount", run_id)
    assert frames[-1]["event"] == "workflow.completed"
    loaded = [f["data"] for f in frames if f["event"] == "agent.trace"
              and f["data"]["event_type"] == "runtime.context.loaded"]
    # The published skill is the counter's only skill: its Skill tool exists only because it survived.
    assert "Skill" in loaded[0]["payload"]["tools"]
