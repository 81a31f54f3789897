"""Follow a request's (or a workflow run's) event stream: render it, answer its questions.

`Follower.run_request()` submits a message, then reads the SSE stream until its
terminal event: a spinner while waiting, reasoning steps, tool calls with durations
and tokens, interactions prompted inline and answered over HTTP (the same stream keeps
going), and the answer rendered as Markdown. Ctrl-C cancels the request.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.text import Text

from mash_api.client import ApiError, ClientError, MashClient, SSEEvent, StreamInterrupted
from mash_api.cli.lineinput import LineInput
from mash_api.cli.render import TraceRenderer, fmt_ms, one_line, render_answer

RECONNECTS = 5
CANCEL_WAIT_SECONDS = 15.0
APPROVAL_OPTIONS = ("approve", "deny", "skip")


class Waiting:
    """A status line that counts the seconds it has been shown ("Queued 12 s…"): rich
    renders it afresh at every refresh of the spinner."""

    def __init__(self, label: str, since: float):
        self.label = label
        self.since = since

    def __rich__(self) -> Text:
        return Text(f"{self.label} {time.monotonic() - self.since:.0f} s…")

    def __str__(self) -> str:
        return f"{self.label}…"


class LiveText:
    """The running step's text as the model writes it (`agent.delta` frames), in a rich Live
    region that vanishes when the stored step arrives and is rendered in its place. A retried
    attempt of the step replaces the text of the one before it."""

    def __init__(self, console: Console, spinner: Spinner):
        self.console = console
        self.spinner = spinner
        self.live: Live | None = None
        self.step_key: str | None = None
        self.attempt = -1
        self.text = ""

    @property
    def showing(self) -> bool:
        return self.live is not None

    def add(self, delta: dict) -> None:
        if not self.console.is_terminal:
            return
        step, attempt = delta.get("step_key"), delta.get("attempt", 0)
        if step != self.step_key or attempt != self.attempt:
            self.step_key, self.attempt, self.text = step, attempt, ""
        self.text += str(delta.get("text") or "")
        if self.live is None:
            self.spinner.stop()
            self.live = Live(Text(self.text), console=self.console, transient=True, refresh_per_second=12)
            self.live.start()
        else:
            self.live.update(Text(self.text))

    def stop(self) -> None:
        if self.live is not None:
            live, self.live = self.live, None
            live.stop()
            self.step_key, self.attempt, self.text = None, -1, ""


@dataclass
class Outcome:
    """How a followed request ended.

    `status`: `completed`, `error` (the request failed), `cancelled` (Ctrl-C or a cancel
    elsewhere), `detached` (we stopped following; it may still run).
    """

    status: str
    request_id: str = ""
    agent_id: str = ""
    session_id: str | None = None
    text: str = ""
    error: str = ""
    error_code: str = ""
    data: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == "completed"


class Spinner:
    """A rich status line that can be paused for prompts; silent when not on a terminal."""

    def __init__(self, console: Console):
        self.console = console
        self._status = None
        self.text = "Waiting…"

    def start(self, text: str | None = None) -> None:
        if text:
            self.text = text
        if not self.console.is_terminal:
            return
        if self._status is None:
            self._status = self.console.status(self.text, spinner="dots")
            self._status.start()
        else:
            self._status.update(self.text)

    def update(self, text: str) -> None:
        self.text = text
        if self._status is not None:
            self._status.update(text)

    def stop(self) -> None:
        if self._status is not None:
            status, self._status = self._status, None
            status.stop()


class Follower:
    def __init__(self, client: MashClient, console: Console, line_input: LineInput):
        self.client = client
        self.console = console
        self.input = line_input

    # -- requests -----------------------------------------------------------------------------

    def run_request(self, agent_id: str, message: str, session_id: str | None = None) -> Outcome:
        """Submit, follow to the end, render. ClientError from the submit propagates."""
        spinner = Spinner(self.console)
        spinner.start("Submitting…")
        try:
            accepted = self.client.submit(agent_id, message, session_id=session_id, tokens=self.console.is_terminal)
        finally:
            spinner.stop()
        rid = str(accepted.get("request_id"))
        return self.follow_request(agent_id, rid, session_id=accepted.get("session_id") or session_id)

    def follow_request(self, agent_id: str, request_id: str, session_id: str | None = None) -> Outcome:
        state = _StreamState(agent_id=agent_id, request_id=request_id, session_id=session_id)
        spinner = Spinner(self.console)
        try:
            spinner.start("Queued…")
            return self._follow(
                lambda after: self.client.request_events(agent_id, request_id, after=after,
                                                         tokens=self.console.is_terminal),
                state, spinner, terminal=("request.completed", "request.error"),
            )
        except KeyboardInterrupt:
            spinner.stop()
            return self.cancel(state)
        except EOFError:
            # Input ended while a question was open: nobody will answer it.
            spinner.stop()
            self.cancel(state)
            raise
        finally:
            spinner.stop()

    def cancel(self, state: "_StreamState") -> Outcome:
        """Ctrl-C: ask the server to cancel, wait (briefly) until it has, report one line."""
        self.console.print("[yellow]Cancelling…[/]")
        outcome = Outcome("cancelled", state.request_id, state.agent_id, state.session_id, error="Request cancelled",
                          error_code="cancelled")
        try:
            status = self.client.cancel(state.agent_id, state.request_id).get("status")
            deadline = time.monotonic() + CANCEL_WAIT_SECONDS
            while status not in ("cancelled", "completed", "failed") and time.monotonic() < deadline:
                time.sleep(0.2)
                status = self.client.request_status(state.agent_id, state.request_id).get("status")
        except KeyboardInterrupt:
            status = "cancelling"
        except ClientError as exc:
            self.console.print(Text(f"cancel failed: {exc}", style="red"))
            return Outcome("detached", state.request_id, state.agent_id, state.session_id, error=str(exc))
        if status == "cancelled":
            self.console.print(Text(f"Request cancelled ({state.request_id}).", style="yellow"))
        elif status in ("completed", "failed"):
            self.console.print(Text(f"Request {status} before it could be cancelled ({state.request_id}).",
                                    style="yellow"))
            outcome.status = "completed" if status == "completed" else "error"
        else:
            self.console.print(Text(f"Request cancellation requested ({state.request_id}); it is still stopping.",
                                    style="yellow"))
        return outcome

    # -- workflow runs ------------------------------------------------------------------------

    def follow_workflow(self, workflow_id: str, run_id: str) -> Outcome:
        state = _StreamState(agent_id="", request_id=run_id, session_id=None, workflow_id=workflow_id)
        spinner = Spinner(self.console)
        try:
            spinner.start(f"Workflow {workflow_id} running…")
            return self._follow(
                lambda after: self.client.workflow_events(workflow_id, run_id, after=after),
                state, spinner, terminal=("workflow.completed", "workflow.error"), workflow=True,
            )
        except KeyboardInterrupt:
            spinner.stop()
            self.console.print(Text(f"Stopped following run {run_id} (it keeps running on the server).",
                                    style="yellow"))
            return Outcome("detached", run_id)
        finally:
            spinner.stop()

    # -- the loop -----------------------------------------------------------------------------

    def _follow(self, open_stream: Callable[[int | None], Iterator[SSEEvent]], state: "_StreamState",
                spinner: Spinner, *, terminal: tuple[str, ...], workflow: bool = False) -> Outcome:
        state.live = LiveText(self.console, spinner)
        try:
            return self._follow_events(open_stream, state, spinner, terminal=terminal, workflow=workflow)
        finally:
            state.live.stop()

    def _follow_events(self, open_stream: Callable[[int | None], Iterator[SSEEvent]], state: "_StreamState",
                       spinner: Spinner, *, terminal: tuple[str, ...], workflow: bool = False) -> Outcome:
        trace = TraceRenderer(self.console)
        attempts = 0
        started = time.monotonic()
        while True:
            events = open_stream(state.last_id)
            broken = False
            try:
                for event in events:
                    attempts = 0
                    if event.id is not None:
                        state.last_id = event.id
                    outcome = self._handle(event, state, spinner, trace, workflow=workflow)
                    if event.name in terminal or outcome is not None:
                        if outcome is None:
                            outcome = Outcome("completed", state.request_id, state.agent_id, state.session_id)
                        if workflow or event.name == "request.completed":
                            self._footer(trace, outcome, time.monotonic() - started)
                        return outcome
            except StreamInterrupted:
                broken = True
            finally:
                close = getattr(events, "close", None)
                if close is not None:
                    close()
            if workflow and state.seen_any and not broken:
                # Upstream closes a successful run's stream without a final event.
                spinner.stop()
                self.console.print(Text("Workflow run finished.", style="green"))
                return Outcome("completed", state.request_id)
            attempts += 1
            if attempts > RECONNECTS:
                spinner.stop()
                raise ClientError("the event stream ended before the request finished")
            time.sleep(min(0.2 * attempts, 1.0))

    def _footer(self, trace: TraceRenderer, outcome: Outcome, elapsed: float) -> None:
        parts = [fmt_ms(elapsed * 1000)]
        if trace.input_tokens or trace.output_tokens:
            parts.append(f"{trace.input_tokens} in / {trace.output_tokens} out tokens")
        total = outcome.data.get("session_total_tokens")
        if total is not None:
            parts.append(f"session {total} tokens")
        self.console.print(Text(" · ".join(parts), style="dim"))

    def _handle(self, event: SSEEvent, state: "_StreamState", spinner: Spinner, trace: TraceRenderer,
                *, workflow: bool) -> Outcome | None:
        data = event.data if isinstance(event.data, dict) else {}
        name = event.name
        if name == "agent.delta":
            state.live.add(data)
            return None
        if state.live.showing and (name != "agent.trace" or data.get("step_key") == state.live.step_key):
            state.live.stop()  # the stored step (or anything after it) replaces the live text
        state.seen_any = True
        prefix = f"  [{data.get('task_id')}]" if workflow and data.get("task_id") else ""
        if name == "request.accepted":
            spinner.start(Waiting("Queued", time.monotonic()))
        elif name == "request.waiting":
            spinner.update("Waiting: the session is busy with an earlier request…")
        elif name == "request.started":
            spinner.update("Thinking…")
        elif name == "agent.trace":
            trace.render(data, prefix=prefix)
            if str(data.get("event_type")) == "runtime.llm.think.completed":
                spinner.update("Working…")
        elif name == "request.interaction.create":
            spinner.stop()
            self._interact(data, state)
            spinner.start("Thinking…")
        elif name == "request.interaction.ack":
            response = data.get("response")
            shown = ", ".join(map(str, response)) if isinstance(response, list) else str(response)
            if data.get("timed_out"):
                self.console.print(Text(f"{prefix}  ↳ timed out: {one_line(shown, 60) or '(empty)'}", style="yellow"))
            elif data.get("interaction_id") not in state.answered:
                self.console.print(Text(f"{prefix}  ↳ answered elsewhere: {one_line(shown, 60)}", style="dim"))
        elif name == "request.completed":
            spinner.stop()
            response = data.get("response") or {}
            text = str(response.get("text") or "") if isinstance(response, dict) else str(response)
            if workflow:
                self.console.print(Text(f"task {data.get('task_id')} answered:", style="bold cyan"))
            render_answer(self.console, text)
            if not workflow:
                return Outcome("completed", state.request_id, state.agent_id, data.get("session_id") or state.session_id,
                               text=text, data=data)
            spinner.start("Workflow running…")
        elif name == "request.error":
            spinner.stop()
            code = str(data.get("error_code") or "error")
            error = str(data.get("error") or "request failed")
            self.console.print(Text(f"{prefix}✗ {one_line(error, 300)} ({code})", style="bold red"))
            if not workflow:
                status = "cancelled" if code == "cancelled" else "error"
                return Outcome(status, state.request_id, state.agent_id, data.get("session_id") or state.session_id,
                               error=error, error_code=code, data=data)
        elif name == "workflow.task.started":
            spinner.stop()
            self.console.print(Text(f"▶ task {data.get('task_id')} ({data.get('task_agent_id')})", style="bold"))
            spinner.start(f"Task {data.get('task_id')} running…")
        elif name == "workflow.task.completed":
            self.console.print(Text(f"✓ task {data.get('task_id')} completed", style="green"))
        elif name == "workflow.task.error":
            spinner.stop()
            self.console.print(Text(f"✗ task {data.get('task_id')} failed: {one_line(data.get('error'), 200)}",
                                    style="bold red"))
        elif name == "workflow.completed":
            spinner.stop()
            self.console.print(Text(f"Workflow run {data.get('run_id') or state.request_id} completed.", style="green"))
            return Outcome("completed", state.request_id, data=data)
        elif name == "workflow.error":
            spinner.stop()
            self.console.print(Text(f"✗ workflow run {data.get('status') or 'failed'}: "
                                    f"{one_line(data.get('error'), 300)}", style="bold red"))
            return Outcome(str(data.get("status") or "error"), state.request_id, error=str(data.get("error") or ""),
                           data=data)
        return None

    # -- interactions -------------------------------------------------------------------------

    def _interact(self, data: dict, state: "_StreamState") -> None:
        interaction_id = str(data.get("interaction_id") or "")
        if not interaction_id or interaction_id in state.answered:
            return
        kind = str(data.get("type") or "info")
        schema = data.get("schema") if isinstance(data.get("schema"), dict) else {}
        who = data.get("subagent_id") or data.get("task_agent_id")
        header = Text("? ", style="bold magenta")
        if who:
            header.append(f"[{who}] ", style="magenta")
        header.append(str(data.get("prompt") or "Input required"), style="bold")
        self.console.print(header)
        if data.get("timeout_seconds"):
            self.console.print(Text(f"  (answer within {int(data['timeout_seconds'])} s)", style="dim"))
        if kind == "approval":
            options = [str(o) for o in schema.get("options") or APPROVAL_OPTIONS]
            response: Any = self._ask_approval(options)
        elif kind == "choice":
            options = [str(o) for o in schema.get("options") or []]
            response = self._ask_choice(options)
        else:
            response = self.input.ask("  answer> ")
        agent_id = str(data.get("agent_id") or state.agent_id)
        request_id = str(data.get("request_id") or state.request_id)
        try:
            self.client.answer(agent_id, request_id, interaction_id, response)
        except ApiError as exc:
            if exc.status in (409, 410):
                self.console.print(Text(f"  {exc.message}", style="yellow"))
            else:
                raise
        state.answered.add(interaction_id)
        shown = ", ".join(response) if isinstance(response, list) else response
        self.console.print(Text(f"  ↳ sent: {one_line(shown, 80) or '(empty)'}", style="dim"))

    def _ask_approval(self, options: list[str]) -> str:
        self.console.print(Text("  " + " / ".join(options), style="cyan"))
        while True:
            answer = self.input.ask(f"  {'/'.join(options)}> ").strip().lower()
            matches = [o for o in options if answer and o.startswith(answer)]
            if len(matches) == 1:
                return matches[0]
            self.console.print(Text(f"  please type one of: {', '.join(options)}", style="yellow"))

    def _ask_choice(self, options: list[str]) -> list[str]:
        for number, option in enumerate(options, 1):
            self.console.print(f"  [cyan]{number}.[/] {escape(option)}")
        self.console.print(Text("  pick by number or name; several allowed, comma-separated", style="dim"))
        while True:
            answer = self.input.ask("  choice> ").strip()
            picked, bad = parse_choice(answer, options)
            if picked and not bad:
                return picked
            if bad:
                self.console.print(Text(f"  not an option: {', '.join(bad)}", style="yellow"))
            else:
                self.console.print(Text("  pick at least one option", style="yellow"))


def parse_choice(answer: str, options: list[str]) -> tuple[list[str], list[str]]:
    """`"1, beta"` -> (["alpha", "beta"], []); unknown parts come back in the second list."""
    picked: list[str] = []
    bad: list[str] = []
    lowered = {o.lower(): o for o in options}
    for part in (p.strip() for p in answer.split(",")):
        if not part:
            continue
        if part.isdigit() and 1 <= int(part) <= len(options):
            value = options[int(part) - 1]
        elif part in options:
            value = part
        elif part.lower() in lowered:
            value = lowered[part.lower()]
        else:
            bad.append(part)
            continue
        if value not in picked:
            picked.append(value)
    return picked, bad


@dataclass
class _StreamState:
    agent_id: str
    request_id: str
    session_id: str | None
    workflow_id: str = ""
    last_id: int | None = None
    seen_any: bool = False
    answered: set = field(default_factory=set)
    live: Any = None  # LiveText, while a stream is followed
