"""The upstream SDK `AgentClient` (mashpy 0.4.2) against our per-agent binding under `/h2a/`.

The client lives in the upstream virtualenv, so a small driver script runs under that
virtualenv's python and prints what the client returned as JSON; the assertions are here.
"""

from __future__ import annotations

import json
import subprocess
import uuid

import pytest

from tests.compat.conftest import API_KEY

pytestmark = pytest.mark.e2e

DRIVER = r'''
import asyncio
import json
import sys
import uuid

from mash.runtime.client import AgentClient, AgentClientError

base_url, api_key, plan_path = sys.argv[1:4]
plan = json.load(open(plan_path))


def terminal(event):
    return event["event"] in ("request.completed", "request.error")


async def run_one(client, message, session_id, answers=None, structured_output=None):
    """Submit, follow the stream to its terminal event (answering interactions), read the status."""
    request_id = await client.post_request(message, session_id=session_id, structured_output=structured_output)
    events, acks = [], []
    async for event in client.stream_response(request_id, timeout=60):
        events.append(event)
        if event["event"] == "request.interaction.create" and answers:
            data = event["data"]
            acks.append(await client.post_interaction(
                request_id, interaction_id=data["interaction_id"], response=answers.pop(0)))
        if terminal(event):
            break
    status = await client.get_request_status(request_id)
    return {"request_id": request_id, "events": events, "interaction_results": acks, "status": status}


async def expect_error(coro):
    try:
        await coro
    except AgentClientError as exc:
        return str(exc)
    except Exception as exc:  # the client's own bugs, reported by type
        return f"{type(exc).__name__}: {exc}"
    return None


async def main():
    client = AgentClient(base_url=base_url, agent_id="primary",
                         default_headers={"Authorization": f"Bearer {api_key}"})
    out = {"health": await client.health()}
    out["plain"] = await run_one(client, plan["plain"], plan["session_id"])
    out["resume_completed"] = await client.resume_request(out["plain"]["request_id"])
    out["approval"] = await run_one(client, json.dumps(plan["approval"]), plan["session_id"], answers=["approve"])
    # Its own session: the test host reads the structured answer from the session's first JSON message.
    out["structured"] = await run_one(client, json.dumps(plan["structured"]), plan["session_id"] + "-structured",
                                      structured_output=plan["structured_schema"])
    missing = str(uuid.uuid4())
    out["errors"] = {
        "status_unknown": await expect_error(client.get_request_status(missing)),
        "resume_unknown": await expect_error(client.resume_request(missing)),
        "stream_unknown": await expect_error(_drain(client.stream_response(missing, timeout=10))),
        "interaction_unknown": await expect_error(client.post_interaction(
            out["plain"]["request_id"], interaction_id="itr_000000000000", response="approve")),
        "blank_message": await expect_error(client.post_request("   ", session_id=plan["session_id"])),
        "unknown_agent": await expect_error(AgentClient(
            base_url=base_url, agent_id="ghost", default_headers={"Authorization": f"Bearer {api_key}"}
        ).post_request("hi", session_id=plan["session_id"])),
        "wrong_key_health": await expect_error(AgentClient(
            base_url=base_url, agent_id="primary", default_headers={"Authorization": "Bearer wrong"}).health()),
        "wrong_key_submit": await expect_error(AgentClient(
            base_url=base_url, agent_id="primary", default_headers={"Authorization": "Bearer wrong"}
        ).post_request("hi", session_id=plan["session_id"])),
    }
    await client.close()
    print(json.dumps(out))


async def _drain(stream):
    async for _ in stream:
        pass


asyncio.run(main())
'''


def run_driver(upstream_venv, tmp_path, server, plan: dict) -> dict:
    driver, plan_path = tmp_path / "driver.py", tmp_path / "plan.json"
    driver.write_text(DRIVER)
    plan_path.write_text(json.dumps(plan))
    done = subprocess.run(
        [str(upstream_venv.python), str(driver), f"{server.url}/h2a", API_KEY, str(plan_path)],
        cwd=tmp_path, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "LANG": "C.UTF-8"},
    )
    assert done.returncode == 0, f"driver failed:\n{done.stderr[-4000:]}\nserver log:\n{server.log()[-3000:]}"
    return json.loads(done.stdout.strip().splitlines()[-1])


def names(result: dict) -> list[str]:
    return [e["event"] for e in result["events"]]


def test_agent_client_completes_requests_through_h2a(upstream_venv, mash_server, tmp_path):
    sid = f"h2a-{uuid.uuid4().hex[:8]}"
    target = tmp_path / "approved.txt"
    plan = {
        "session_id": sid,
        "plain": "hello through h2a",
        "approval": {"script": [
            {"tool_calls": [{"name": "write_file", "arguments": {"path": str(target), "text": "via h2a"}}]},
            "approved and written",
        ]},
        "structured": {"script": ["structured answer"], "structured": {"answer": 42}},
        "structured_schema": {"type": "object", "properties": {"answer": {"type": "integer"}},
                              "required": ["answer"]},
    }
    out = run_driver(upstream_venv, tmp_path, mash_server, plan)

    assert out["health"]["status"] == "ok"
    assert {a["agent_id"] for a in out["health"]["agents"]} >= {"primary", "helper"}

    plain = out["plain"]
    uuid.UUID(plain["request_id"])
    events = names(plain)
    assert events[0] == "request.accepted" and events[-1] == "request.completed", events
    assert "request.started" in events and "agent.trace" in events
    accepted = plain["events"][0]["data"]
    assert accepted == {"request_id": plain["request_id"], "agent_id": "primary", "session_id": sid,
                        "status": "accepted"}
    completed = plain["events"][-1]["data"]
    assert completed["status"] == "completed"
    assert completed["response"]["text"] == "echo: hello through h2a"
    assert completed["turn_id"] == completed["trace_id"]
    assert plain["status"]["request_id"] == plain["request_id"]
    assert plain["status"]["status"] == "completed"
    assert "workflow_id" in plain["status"]

    assert out["resume_completed"]["request_id"] == plain["request_id"]
    assert out["resume_completed"]["status"] == "completed"

    approval = out["approval"]
    events = names(approval)
    assert events.index("request.interaction.create") < events.index("request.interaction.ack") < len(events) - 1
    create = next(e["data"] for e in approval["events"] if e["event"] == "request.interaction.create")
    assert create["type"] == "approval" and create["interaction_id"].startswith("itr_")
    assert approval["interaction_results"] == [{"ok": True, "interaction_id": create["interaction_id"]}]
    ack = next(e["data"] for e in approval["events"] if e["event"] == "request.interaction.ack")
    assert ack["response"] == "approve"
    assert approval["events"][-1]["data"]["response"]["text"] == "approved and written"
    assert approval["status"]["status"] == "completed"
    assert target.read_text() == "via h2a"

    structured = out["structured"]["events"][-1]["data"]
    assert structured["status"] == "completed", json.dumps(structured)
    assert structured["response"]["structured_output"] == {"answer": 42}

    errors = out["errors"]
    assert "not found" in errors["status_unknown"]
    assert "not found" in errors["resume_unknown"]
    # Upstream 0.4.2 reads the body of a failed stream before loading it, so any stream error
    # surfaces as httpx.ResponseNotRead instead of AgentClientError: check the wire directly.
    assert errors["stream_unknown"].startswith(("AgentClientError", "ResponseNotRead", "GET stream failed (status=404)"))
    with mash_server.client() as http:
        missing = http.get(f"/h2a/agent/primary/request/{uuid.uuid4()}")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "REQUEST_NOT_FOUND"
    assert "POST interaction failed (status=404)" in errors["interaction_unknown"]
    assert "POST request failed (status=400)" in errors["blank_message"]
    assert "POST request failed (status=404)" in errors["unknown_agent"]
    assert "health check failed (status=401)" in errors["wrong_key_health"]
    assert "POST request failed (status=401)" in errors["wrong_key_submit"]
