"""Rich output for the client commands and the REPL: tables, turns, stream events."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any, Iterable

from rich import box
from rich.console import Console
from rich.markdown import Markdown
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from mash_runtime.presentation.formats import duration_text


def make_console(file=None, *, no_color: bool = False, stderr: bool = False) -> Console:
    return Console(file=file, no_color=no_color or None, stderr=stderr, highlight=False, soft_wrap=False)


def fmt_ms(ms: Any) -> str:
    return duration_text(ms, compact=True)


def fmt_when(epoch: Any) -> str:
    try:
        return dt.datetime.fromtimestamp(float(epoch)).strftime("%Y-%m-%d %H:%M:%S")
    except (TypeError, ValueError, OverflowError, OSError):
        return "-"


def one_line(value: Any, limit: int = 100) -> str:
    """A short single-line preview of any value."""
    if value is None:
        return ""
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def fmt_tokens(input_tokens: Any, output_tokens: Any) -> str:
    return f"{int(input_tokens or 0)} in / {int(output_tokens or 0)} out tokens"


# -- tables -------------------------------------------------------------------------------


def cells(*values: Any) -> list[Text]:
    """Table cells as plain text (server data must not be read as rich markup)."""
    return [Text("" if v is None else str(v)) for v in values]


def agents_table(agents: Iterable[dict], primary_agent_id: str | None = None, current: str | None = None) -> Table:
    table = Table(box=box.SIMPLE_HEAD, show_edge=False)
    table.add_column("Agent", style="bold cyan", no_wrap=True)
    table.add_column("Role")
    table.add_column("Name")
    table.add_column("Description")
    for agent in agents:
        agent_id = str(agent.get("agent_id") or "")
        meta = agent.get("metadata") or {}
        marker = " *" if current and agent_id == current else ""
        role = str(agent.get("role") or ("primary" if agent_id == primary_agent_id else "subagent"))
        table.add_row(*cells(agent_id + marker, role, meta.get("display_name"), meta.get("description")))
    return table


def sessions_table(sessions: Iterable[dict], current: str | None = None) -> Table:
    table = Table(box=box.SIMPLE_HEAD, show_edge=False)
    table.add_column("Session", style="bold cyan", no_wrap=True)
    table.add_column("Turns", justify="right")
    table.add_column("Tokens", justify="right")
    table.add_column("Last activity")
    for row in sessions:
        sid = str(row.get("session_id") or "")
        table.add_row(*cells(sid + (" *" if current and sid == current else ""), row.get("turn_count") or 0,
                             row.get("session_total_tokens") or 0, fmt_when(row.get("last_activity_at"))))
    return table


def workflows_table(workflows: Iterable[dict]) -> Table:
    table = Table(box=box.SIMPLE_HEAD, show_edge=False)
    table.add_column("Workflow", style="bold cyan", no_wrap=True)
    table.add_column("Tasks")
    table.add_column("Metadata")
    for wf in workflows:
        tasks = ", ".join(f"{t.get('task_id')} ({t.get('agent_id')})" for t in wf.get("tasks") or [])
        table.add_row(*cells(wf.get("workflow_id"), tasks, one_line(wf.get("metadata") or "", 60)))
    return table


def render_run(console: Console, run: dict) -> None:
    console.print(f"[bold]Run[/] {escape(str(run.get('run_id')))}  [dim]workflow[/] "
                  f"{escape(str(run.get('workflow_id')))}  [dim]status[/] {status_markup(run.get('status'))}")
    for label, key in (("dedup key", "dedup_key"), ("created", "created_at"), ("started", "started_at"),
                       ("finished", "finished_at")):
        value = run.get(key)
        if value not in (None, ""):
            console.print(f"  [dim]{label}:[/] {escape(fmt_when(value) if key.endswith('_at') else str(value))}")
    if run.get("error"):
        console.print(f"  [red]error:[/] {escape(one_line(run['error'], 200))}")
    if run.get("summary"):
        console.print(f"  [dim]summary:[/] {escape(one_line(run['summary'], 200))}")
    if run.get("output") not in (None, "", {}):
        output = run["output"]
        console.print("  [dim]output:[/]")
        if isinstance(output, str):
            console.print(Markdown(output))
        else:
            console.print_json(data=output)


def status_markup(status: Any) -> str:
    color = {"completed": "green", "failed": "red", "cancelled": "yellow", "error": "red"}.get(str(status), "cyan")
    return f"[{color}]{escape(str(status))}[/]"


def render_turns(console: Console, turns: list[dict]) -> None:
    if not turns:
        console.print("[yellow]No conversation history.[/]")
        return
    for index, turn in enumerate(turns, 1):
        tokens = turn.get("session_total_tokens")
        console.rule(Text(f"Turn {index} · {fmt_when(turn.get('created_at'))} · session tokens {tokens or 0}",
                          style="dim"), align="left", style="dim")
        console.print(Text.assemble(("You: ", "bold green"), str(turn.get("user_message") or "")))
        console.print(Text("Agent:", style="bold cyan"))
        console.print(Markdown(str(turn.get("agent_response") or "")))


def render_answer(console: Console, text: str) -> None:
    if text.strip():
        console.print(Markdown(text))
    else:
        console.print("[dim](empty answer)[/]")


# -- stream events --------------------------------------------------------------------------


class TraceRenderer:
    """One line per interesting `agent.trace` event: reasoning, tool calls, tokens.

    The final answer is not printed here (the terminal event carries it).
    """

    def __init__(self, console: Console):
        self.console = console
        self.input_tokens = 0
        self.output_tokens = 0

    def render(self, data: dict, prefix: str = "") -> None:
        event_type = str(data.get("event_type") or "")
        payload = data.get("payload") if isinstance(data.get("payload"), dict) else {}
        if event_type.startswith("subagent."):
            self.render_subagent(event_type[len("subagent."):], payload, prefix)
            return
        self.render_runtime(event_type, payload, prefix, count_tokens=not prefix)

    def render_runtime(self, event_type: str, payload: dict, prefix: str = "", count_tokens: bool = True) -> None:
        console = self.console
        if event_type == "llm.request.complete":
            if count_tokens:
                self.input_tokens += int(payload.get("input_tokens") or 0)
                self.output_tokens += int(payload.get("output_tokens") or 0)
            return
        if event_type == "runtime.llm.think.completed":
            text = str(payload.get("assistant_text") or "").strip()
            usage = payload.get("token_usage") or {}
            action = payload.get("action_type")
            meta = f"{fmt_ms(payload.get('duration_ms'))} · {fmt_tokens(usage.get('input'), usage.get('output'))}"
            if action == "tool_call":
                names = ", ".join(str(c.get("name")) for c in payload.get("tool_calls") or [])
                line = Text(f"{prefix}  thought ", style="dim")
                if text:
                    line.append(one_line(text, 160), style="italic")
                    line.append(" ")
                line.append(f"→ {names} ({meta})", style="dim")
                console.print(line)
            else:
                console.print(Text(f"{prefix}  answered ({meta})", style="dim"))
            return
        if event_type in ("runtime.tool.call.completed", "runtime.subagent.call.completed"):
            result = payload.get("result") or {}
            failed = bool(result.get("is_error"))
            name = str(payload.get("tool_name") or "tool")
            line = Text(f"{prefix}  ")
            line.append("✗ " if failed else "✓ ", style="red" if failed else "green")
            line.append(name, style="bold")
            line.append(f" {fmt_ms(payload.get('duration_ms'))}", style="dim")
            content = one_line(result.get("content"), 100)
            if content:
                line.append(" → ", style="dim")
                line.append(content, style="red" if failed else "")
            console.print(line)
            return

    def render_subagent(self, event: str, payload: dict, prefix: str) -> None:
        agent = str(payload.get("agent_id") or "subagent")
        nested = payload.get("data") if isinstance(payload.get("data"), dict) else {}
        label = f"{prefix}  [{agent}]"
        if event == "request.started":
            self.console.print(Text(f"{label} started", style="magenta"))
        elif event == "request.completed":
            self.console.print(Text(f"{label} finished", style="magenta"))
        elif event == "request.error":
            self.console.print(Text(f"{label} error ({nested.get('error_code') or 'error'}): "
                                    f"{one_line(nested.get('error'), 160)}", style="red"))
        elif not event.startswith("request."):
            self.render_runtime(event, nested, prefix=label.rstrip(), count_tokens=False)
