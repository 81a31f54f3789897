"""The client pieces without a server: help texts, SSE parsing, sessions, the REPL over a
mock transport (httpx.MockTransport)."""

from __future__ import annotations

import io
import json

import httpx
import pytest
from django.core.management import load_command_class

from mash_api.cli.follow import parse_choice
from mash_api.cli.lineinput import PipeInput, slash_completer
from mash_api.cli.render import make_console
from mash_api.cli.repl import Repl, SlashCommand, UsageError, parse_workflow_args
from mash_api.client import ApiError, MashClient, normalize_base_url, parse_sse, subagent_session_id

FLAGS = {
    "connect": ["--api-base-url", "--api-key", "--agent"],
    "status": ["--api-base-url", "--api-key", "--agent"],
    "agents": ["--api-base-url", "--api-key", "--agent"],
    "sessions": ["--api-base-url", "--api-key", "--agent"],
    "history": ["--api-base-url", "--api-key", "--agent", "--session-id", "--limit"],
    "repl": ["--api-base-url", "--api-key", "--agent", "--session-id"],
}


@pytest.mark.parametrize("name", sorted(FLAGS))
def test_it_explains_every_flag_in_help(name):
    command = load_command_class("mash_api", name)
    text = command.create_parser("mash", name).format_help()
    for flag in FLAGS[name]:
        line = next((ln for ln in text.splitlines() if ln.strip().startswith(flag)), None)
        assert line is not None, f"{flag} missing from `mash {name} --help`:\n{text}"
    # Every flag has an explanation, not just a name.
    assert "Authorization: Bearer" in text or name not in ("status", "connect")


def test_it_explains_the_workflow_subcommands_in_help():
    command = load_command_class("mash_api", "workflow")
    parser = command.create_parser("mash", "workflow")
    assert "{list,run,status}" in parser.format_help()
    run_help = parser._subparsers._group_actions[0].choices["run"].format_help()
    for flag in ("--dedup-key", "--input", "--no-follow", "--api-base-url", "--api-key", "WORKFLOW_ID"):
        assert flag in run_help, run_help
    status_help = parser._subparsers._group_actions[0].choices["status"].format_help()
    assert "RUN_ID" in status_help


def test_it_derives_subagent_sessions_like_the_server():
    from mash_runtime.services import subagent_session_id as server_side

    ours = subagent_session_id("session-1", "helper")
    assert ours == server_side("session-1", "helper")
    assert ours.startswith("subagent:helper:") and len(ours.rsplit(":", 1)[1]) == 24


def test_it_normalizes_base_urls():
    assert normalize_base_url("http://h:1/") == "http://h:1"
    assert normalize_base_url("http://h:1/api/v1/") == "http://h:1"
    assert normalize_base_url("h:1") == "http://h:1"
    assert normalize_base_url("https://h/prefix/api/v1") == "https://h/prefix"


def test_it_parses_sse_frames():
    lines = ["id: 1", "event: request.accepted", 'data: {"a": 1}', "", ": keep-alive", "",
             "id: 2", "event: agent.trace", 'data: {"b":', 'data: 2}', "", "event: x", "data: not json", ""]
    events = list(parse_sse(lines))
    assert [(e.id, e.name, e.data) for e in events] == [
        (1, "request.accepted", {"a": 1}), (2, "agent.trace", {"b": 2}), (None, "x", {"raw": "not json"})]


def test_it_parses_choices_by_number_or_name():
    options = ["alpha", "beta", "Gamma"]
    assert parse_choice("1, beta", options) == (["alpha", "beta"], [])
    assert parse_choice("gamma,3,1", options) == (["Gamma", "alpha"], [])
    assert parse_choice("4, delta", options) == ([], ["4", "delta"])


def test_it_parses_workflow_arguments_with_json_input():
    assert parse_workflow_args('run wf key --input {"a": [1, 2]}') == ("run", ["wf", "key"], {"a": [1, 2]})
    assert parse_workflow_args("status wf r1") == ("status", ["wf", "r1"], None)
    with pytest.raises(UsageError, match="not valid JSON"):
        parse_workflow_args("run wf --input {nope")


# -- a scripted server ------------------------------------------------------------------------


def sse(*events) -> bytes:
    out = []
    for seq, (name, data) in enumerate(events, 1):
        out.append(f"id: {seq}\nevent: {name}\ndata: {json.dumps(data)}\n\n")
    return "".join(out).encode()


class FakeServer:
    """Answers the routes the REPL uses; records the calls."""

    def __init__(self, stream: bytes):
        self.stream = stream
        self.calls: list[tuple[str, str, object]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content) if request.content else None
        self.calls.append((request.method, request.url.path, body))
        assert "x-api-key" not in request.headers
        path = request.url.path
        if path == "/api/v1/health":
            return httpx.Response(200, json={"data": {"status": "ok", "service": "mash-api", "deployment": {
                "primary_agent_id": "primary",
                "agents": [{"agent_id": "primary", "role": "primary"}, {"agent_id": "helper", "role": "subagent"}]}}})
        if path == "/api/v1/agent":
            return httpx.Response(200, json={"data": {"primary_agent_id": "primary", "agents": [
                {"agent_id": "primary", "role": "primary"}, {"agent_id": "helper", "role": "subagent"}]}})
        if path.endswith("/request") and request.method == "POST":
            return httpx.Response(202, json={"data": {"request_id": "r1", "agent_id": "primary",
                                                      "session_id": body.get("session_id"), "status": "accepted"}})
        if path.endswith("/events"):
            return httpx.Response(200, content=self.stream, headers={"content-type": "text/event-stream"})
        if path == "/api/v1/workflow/wf/run":
            return httpx.Response(202, json={"data": {"run_id": "run-1", "workflow_id": "wf", "status": "queued"}})
        if path.endswith("/interaction"):
            return httpx.Response(200, json={"data": {"ok": True, "interaction_id": body["interaction_id"]}})
        return httpx.Response(404, json={"error": {"code": "ROUTE_NOT_FOUND", "message": f"No route for {path}"}})


def make_repl(server: FakeServer, answers: str = "", commands=None):
    out = io.StringIO()
    console = make_console(out, no_color=True)
    console.width = 200
    client = MashClient("http://mash.test", api_key="k", transport=httpx.MockTransport(server))
    repl = Repl(client, console=console, line_input=PipeInput(console, io.StringIO(answers)), commands=commands,
                session_id="s1", history_path=None)
    repl.connect()
    return repl, out


def test_it_follows_a_stream_answers_interactions_and_renders_the_answer():
    stream = sse(
        ("request.accepted", {"request_id": "r1", "status": "accepted"}),
        ("request.started", {"request_id": "r1", "status": "started"}),
        ("agent.trace", {"event_type": "llm.request.complete", "payload": {"input_tokens": 7, "output_tokens": 3}}),
        ("agent.trace", {"event_type": "runtime.llm.think.completed", "payload": {
            "action_type": "tool_call", "assistant_text": "Let me look", "tool_calls": [{"name": "bash"}],
            "token_usage": {"input": 7, "output": 3}, "duration_ms": 12}}),
        ("request.interaction.create", {"request_id": "r1", "agent_id": "primary", "interaction_id": "itr_1",
                                        "type": "approval", "prompt": "Allow bash?",
                                        "schema": {"type": "enum", "options": ["approve", "deny", "skip"]}}),
        ("request.interaction.ack", {"interaction_id": "itr_1", "response": "approve"}),
        ("agent.trace", {"event_type": "runtime.tool.call.completed", "payload": {
            "tool_name": "bash", "duration_ms": 1500, "result": {"content": "file-a\nfile-b", "is_error": False}}}),
        ("request.interaction.create", {"request_id": "r1", "agent_id": "primary", "interaction_id": "itr_2",
                                        "type": "choice", "prompt": "Which?",
                                        "schema": {"type": "multi_select", "options": ["red", "green", "blue"]}}),
        ("request.interaction.create", {"request_id": "r1", "agent_id": "primary", "interaction_id": "itr_3",
                                        "type": "info", "prompt": "Your name?", "schema": {"type": "text"}}),
        ("request.completed", {"request_id": "r1", "status": "completed", "session_total_tokens": 42,
                               "response": {"text": "# Title\n\nAll **done**."}}),
    )
    server = FakeServer(stream)
    # "nope" is not an option: asked again; then 3 and green; then the free-text answer.
    repl, out = make_repl(server, answers="maybe\nap\npurple\n3, green\nAda Lovelace\n")
    outcome = repl.ask("hello")
    text = out.getvalue()
    assert outcome.status == "completed" and outcome.text == "# Title\n\nAll **done**."
    answers = [(p, b) for m, p, b in server.calls if p.endswith("/interaction")]
    assert answers == [
        ("/api/v1/agent/primary/request/r1/interaction", {"interaction_id": "itr_1", "response": "approve"}),
        ("/api/v1/agent/primary/request/r1/interaction", {"interaction_id": "itr_2", "response": ["blue", "green"]}),
        ("/api/v1/agent/primary/request/r1/interaction", {"interaction_id": "itr_3", "response": "Ada Lovelace"}),
    ]
    submit = next(b for m, p, b in server.calls if p == "/api/v1/agent/primary/request")
    assert submit == {"message": "hello", "session_id": "s1"}
    assert "Let me look" in text and "bash" in text
    assert "✓ bash 1.5 s → file-a file-b" in text
    assert "please type one of: approve, deny, skip" in text
    assert "not an option: purple" in text
    assert "Title" in text and "All done." in text  # Markdown rendered, not raw
    assert "7 in / 3 out tokens" in text and "session 42 tokens" in text


def test_it_shows_a_request_error_as_one_red_line():
    stream = sse(("request.accepted", {}), ("request.error", {"status": "error", "error": "model exploded",
                                                              "error_code": "LLM_UNAVAILABLE", "retryable": False}))
    repl, out = make_repl(FakeServer(stream))
    outcome = repl.ask("hello")
    assert outcome.status == "error" and outcome.error_code == "LLM_UNAVAILABLE"
    lines = [ln for ln in out.getvalue().splitlines() if "model exploded" in ln]
    assert lines == ["✗ model exploded (LLM_UNAVAILABLE)"]


def test_it_lets_a_host_app_add_slash_commands():
    seen = []

    def shout(repl, args):
        """Say it loudly."""
        seen.append((repl.agent_id, args))

    repl, out = make_repl(FakeServer(b""), commands={"/shout": shout})
    repl.register(SlashCommand("whisper", lambda r, a: seen.append(("w", a)), help="Say it softly",
                               aliases=("/psst",)))
    repl.handle("/shout hello world")
    repl.handle("/psst hi")
    assert seen == [("primary", "hello world"), ("w", "hi")]
    repl.handle("/help")
    text = out.getvalue()
    assert "/shout" in text and "Say it loudly." in text and "/whisper" in text and "/psst" in text
    assert "/history [N]" in text and "/use <agent>" in text
    assert "/shout" in repl.completion_words("/sh")
    with pytest.raises(UsageError, match="unknown command /nope"):
        repl.handle("/nope")


def test_it_switches_to_a_subagent_session_and_back():
    repl, out = make_repl(FakeServer(b""))
    assert repl.session_id == "s1"
    repl.handle("/use helper")
    assert repl.agent_id == "helper" and repl.session_id == subagent_session_id("s1", "helper")
    repl.handle("/use primary")
    assert repl.agent_id == "primary" and repl.session_id == "s1"
    with pytest.raises(UsageError, match="unknown agent 'ghost'"):
        repl.handle("/use ghost")


def test_it_turns_error_envelopes_into_one_line():
    client = MashClient("http://mash.test", transport=httpx.MockTransport(FakeServer(b"")))
    with pytest.raises(ApiError) as info:
        client.workflow_run("wf", "run:1")
    assert str(info.value) == "GET /api/v1/workflow/wf/runs/run%3A1 failed (404): No route for /api/v1/workflow/wf/runs/run:1"
    assert info.value.code == "ROUTE_NOT_FOUND"


def test_it_follows_a_workflow_run_and_answers_through_the_task_agent():
    task = {"workflow_id": "wf", "run_id": "run-1", "task_id": "t1", "task_agent_id": "helper"}
    stream = sse(
        ("workflow.task.started", task),
        ("request.started", {**task, "request_id": "r9", "agent_id": "helper"}),
        ("agent.trace", {**task, "event_type": "runtime.tool.call.completed", "payload": {
            "tool_name": "bash", "duration_ms": 5, "result": {"content": "boom", "is_error": True}}}),
        ("request.interaction.create", {**task, "request_id": "r9", "agent_id": "helper", "interaction_id": "itr_9",
                                        "type": "info", "prompt": "Go on?", "schema": {"type": "text"}}),
        ("request.completed", {**task, "request_id": "r9", "agent_id": "helper", "response": {"text": "task *ok*"}}),
        ("workflow.task.completed", task),
        ("workflow.completed", {"workflow_id": "wf", "run_id": "run-1", "status": "completed"}),
    )
    server = FakeServer(stream)
    repl, out = make_repl(server, answers="yes please\n")
    repl.handle('/workflow run wf k1 --input {"n": 1}')
    text = out.getvalue()
    assert ("POST", "/api/v1/workflow/wf/run", {"dedup_key": "k1", "input": {"n": 1}}) in server.calls
    assert ("POST", "/api/v1/agent/helper/request/r9/interaction",
            {"interaction_id": "itr_9", "response": "yes please"}) in server.calls
    assert "Started run run-1 of wf (queued)" in text
    assert "▶ task t1 (helper)" in text and "✗ bash 5 ms → boom" in text
    assert "task ok" in text and "Workflow run run-1 completed." in text


def test_it_completes_slash_commands_in_the_terminal():
    from prompt_toolkit.document import Document

    repl, _ = make_repl(FakeServer(b""))
    completer = slash_completer(repl.completion_words)
    words = lambda text: [c.text for c in completer.get_completions(Document(text), None)]  # noqa: E731
    assert "/history" in words("/hi") and "/help" not in words("/hi")
    assert words("/use h") == ["helper"]
    assert words("/workflow s") == ["status"]
    assert words("plain text") == []


def test_the_follower_shows_token_deltas_live_then_the_stored_answer_in_their_place(monkeypatch):
    import io

    from rich.console import Console

    import mash_api.cli.follow as follow
    from mash_api.cli.follow import Follower
    from mash_api.client import SSEEvent

    class Events:
        """A client whose stream plays a fixed list of frames (and records the `tokens` ask)."""

        def __init__(self, frames):
            self.frames = frames
            self.asked_tokens = None

        def request_events(self, agent_id, request_id, *, after=None, tokens=False):
            self.asked_tokens = tokens
            return iter(self.frames)

    def delta(text, index, attempt=0):
        return SSEEvent("agent.delta", {"request_id": "r", "step_key": "plan.0", "attempt": attempt,
                                        "index": index, "text": text})

    frames = [
        SSEEvent("request.accepted", {}, 1), SSEEvent("request.started", {}, 2),
        delta("Lost ", 0), delta("attempt", 1),            # attempt 0 failed (a transient error) ...
        delta("Hello ", 0, attempt=1), delta("there", 1, attempt=1),  # ... attempt 1 starts afresh
        SSEEvent("agent.trace", {"event_type": "runtime.llm.think.completed", "step_key": "plan.0"}, 3),
        SSEEvent("request.completed", {"response": {"text": "Hello there"}}, 4),
    ]
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=100)
    client = Events(frames)
    follower = Follower(client, console, line_input=None)
    seen = []
    real_add = follow.LiveText.add

    def add(self, data):  # what the live region shows after each delta
        real_add(self, data)
        seen.append(self.text)

    monkeypatch.setattr(follow.LiveText, "add", add)
    outcome = follower.follow_request("a", "r")
    assert client.asked_tokens is True  # a terminal asks for tokens
    assert seen == ["Lost ", "Lost attempt", "Hello ", "Hello there"]  # a new attempt replaces the old text
    assert outcome.ok and outcome.text == "Hello there"
    assert "Hello there" in out.getvalue()


def test_a_queued_request_shows_its_age():
    import io
    import time

    from rich.console import Console

    from mash_api.cli.follow import Waiting

    out = io.StringIO()
    Console(file=out, width=60).print(Waiting("Queued", time.monotonic() - 12.2))
    assert out.getvalue().strip() == "Queued 12 s…"
