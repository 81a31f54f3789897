"""Ctrl-C reaches the REPL at any moment, not only while it waits for a stream or a line:
wherever it lands, it cancels the running request or counts as a press at the prompt.

The presses here are real SIGINTs (`signal.raise_signal`), sent at the moment a user's
could land; in a terminal that moment depends on how busy the machine is."""

from __future__ import annotations

import io
import json
import signal

import httpx
import pytest

from mash_api.cli.lineinput import PipeInput
from mash_api.cli.render import make_console
from mash_api.cli.repl import Repl
from mash_api.client import MashClient
from mash_runtime.models import Request


def escaped_ctrl_c(what: str):
    # A KeyboardInterrupt reaching pytest would stop the whole session instead of failing this test.
    return pytest.fail(f"Ctrl-C escaped the REPL {what}")


class CtrlCAtThePrompt:
    """A terminal where the user presses Ctrl-C at every prompt (prompt-toolkit raises
    KeyboardInterrupt for the key)."""

    def read(self, prompt: str) -> str:
        raise KeyboardInterrupt

    ask = read


class CtrlCWhileWriting(io.StringIO):
    """Terminal output during which the user presses Ctrl-C: once, as `trigger` is written."""

    def __init__(self, trigger: str):
        super().__init__()
        self.trigger = trigger
        self.fired = False

    def write(self, text: str) -> int:
        written = super().write(text)
        if self.trigger in text and not self.fired:
            self.fired = True
            signal.raise_signal(signal.SIGINT)
        return written


def test_a_second_ctrl_c_while_the_exit_hint_prints_exits_cleanly():
    out = CtrlCWhileWriting("press Ctrl-C again")
    repl = Repl(MashClient("http://mash.test"), console=make_console(out, no_color=True),
                line_input=CtrlCAtThePrompt(), history_path=None)
    repl.agent_id = "primary"  # as if connected: the prompt loop needs no server
    try:
        assert repl.run() == 0
    except KeyboardInterrupt:
        escaped_ctrl_c("while it printed the exit hint")
    assert out.fired
    assert out.getvalue().splitlines()[-2:] == ["(press Ctrl-C again or Ctrl-D to exit)", "Bye."]


class CtrlCOnceAccepted(httpx.HTTPTransport):
    """The user presses Ctrl-C the moment the server has accepted the request, before its id
    reached the REPL."""

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        if request.method == "POST" and request.url.path.endswith("/request"):
            signal.raise_signal(signal.SIGINT)
        return response


@pytest.mark.e2e
def test_ctrl_c_while_the_request_is_submitted_cancels_it_once_accepted(mash_server):
    out = io.StringIO()
    client = MashClient(mash_server.url, transport=CtrlCOnceAccepted())
    repl = Repl(client, console=make_console(out, no_color=True), line_input=PipeInput(make_console(io.StringIO()),
                io.StringIO("")), session_id="cli-early-cancel", history_path=None)
    repl.connect()
    message = json.dumps({"script": [{"tool_calls": [{"name": "bash", "arguments": {"command": "sleep 30"}}]},
                                     "never"]})
    try:
        outcome = repl.ask(message)
    except KeyboardInterrupt:
        escaped_ctrl_c("while it submitted a request (which goes on running)")
    assert outcome.status == "cancelled", out.getvalue()
    assert "Request cancelled" in out.getvalue()
    assert Request.objects.get(pk=outcome.request_id).status == Request.Status.CANCELLED
