"""The interactive REPL against a Mash server, and how host apps add slash commands.

Plain text is sent to the current agent as a request and its stream is followed (see
`mash_api.cli.follow`). Lines starting with `/` are slash commands. A host app adds
its own::

    from mash_api.cli import Repl, SlashCommand

    def changelog(repl: Repl, args: str) -> None:
        repl.ask(f"Summarise the last {args or 5} commits", agent_id="pilot")

    Repl(client, commands=[SlashCommand("/changelog", changelog, help="Summarise commits", usage="/changelog [N]")]).run()

`commands` may also be a mapping `{"/changelog": handler}` (help from the handler's
docstring). A handler gets the REPL and the text after the command name; it may use
`repl.ask()`, `repl.console`, `repl.client`, `repl.agent_id`, `repl.session_id`.
"""

from __future__ import annotations

import json
import signal
import threading
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich import box
from rich.text import Text

from mash_api.client import ClientError, MashClient, subagent_session_id
from mash_api.cli.config import mash_home
from mash_api.cli.follow import Follower, Outcome, Spinner, _StreamState
from mash_api.cli.lineinput import LineInput, PipeInput, TerminalInput, slash_completer, stdin_is_terminal
from mash_api.cli.render import (
    agents_table,
    make_console,
    render_run,
    render_turns,
    sessions_table,
    workflows_table,
)

Handler = Callable[["Repl", str], Any]


class ExitRepl(Exception):
    """Raised by a handler (e.g. `/exit`) to leave the REPL."""


class UsageError(Exception):
    """A slash command was given bad arguments: shown as one yellow line."""


@dataclass(frozen=True)
class SlashCommand:
    """One slash command: `name` ("/changelog"), `handler(repl, args_text)`, help for /help."""

    name: str
    handler: Handler
    help: str = ""
    usage: str = ""
    aliases: tuple[str, ...] = ()

    def __post_init__(self):
        object.__setattr__(self, "name", _slash(self.name))
        object.__setattr__(self, "aliases", tuple(_slash(a) for a in self.aliases))
        if not self.help:
            doc = (getattr(self.handler, "__doc__", None) or "").strip()
            object.__setattr__(self, "help", doc.splitlines()[0] if doc else "")

    @property
    def names(self) -> tuple[str, ...]:
        return (self.name, *self.aliases)


def _slash(name: str) -> str:
    name = str(name).strip().lower()
    if not name or name == "/" or " " in name:
        raise ValueError(f"bad slash command name: {name!r}")
    return name if name.startswith("/") else f"/{name}"


def as_commands(commands: Iterable[SlashCommand] | Mapping[str, Handler] | None) -> list[SlashCommand]:
    if not commands:
        return []
    if isinstance(commands, Mapping):
        return [value if isinstance(value, SlashCommand) else SlashCommand(name, value) for name, value in commands.items()]
    return list(commands)


class Repl:
    """An interactive session with a Mash server (see the module docstring)."""

    def __init__(
        self,
        client: MashClient,
        *,
        agent_id: str | None = None,
        session_id: str | None = None,
        commands: Iterable[SlashCommand] | Mapping[str, Handler] | None = None,
        console: Console | None = None,
        line_input: LineInput | None = None,
        app_name: str = "mash",
        history_path: Path | None = None,
        banner: str | None = None,
    ):
        self.client = client
        self.console = console or make_console()
        self.app_name = app_name
        self.banner = banner
        self.requested_agent = (agent_id or "").strip() or None
        self.requested_session = (session_id or "").strip() or None
        self.history_path = history_path if history_path is not None else mash_home() / f"{_slug(app_name)}_history"
        self._input = line_input
        self.commands: dict[str, SlashCommand] = {}
        self._lookup: dict[str, SlashCommand] = {}
        for command in default_commands():
            self.register(command)
        for command in as_commands(commands):
            self.register(command)
        # Filled by connect().
        self.primary_agent_id = ""
        self.agent_ids: list[str] = []
        self.agent_id = ""
        self.primary_session_id = ""
        self.sessions: dict[str, str] = {}
        self.workflow_ids: list[str] = []
        self.last_outcome: Outcome | None = None

    # -- registration ------------------------------------------------------------------------

    def register(self, command: SlashCommand | str, handler: Handler | None = None, help: str = "",
                 usage: str = "") -> SlashCommand:
        """Add (or replace) a slash command: `register(SlashCommand(...))` or `register("/x", fn, "help")`."""
        if not isinstance(command, SlashCommand):
            if handler is None:
                raise TypeError("register(name, handler): handler is required")
            command = SlashCommand(command, handler, help=help, usage=usage)
        old = self.commands.pop(command.name, None)
        if old is not None:
            for name in old.names:
                self._lookup.pop(name, None)
        self.commands[command.name] = command
        for name in command.names:
            self._lookup[name] = command
        return command

    # -- state ---------------------------------------------------------------------------------

    @property
    def session_id(self) -> str:
        return self.session_for(self.agent_id)

    @property
    def input(self) -> LineInput:
        if self._input is None:
            if stdin_is_terminal():
                self._input = TerminalInput(self.history_path, slash_completer(self.completion_words))
            else:
                self._input = PipeInput(self.console)
        return self._input

    @property
    def follower(self) -> Follower:
        return Follower(self.client, self.console, self.input)

    def session_for(self, agent_id: str) -> str:
        """The session a message to `agent_id` goes to: the REPL's primary session, or the
        subagent session the server derives from it (`subagent:<id>:<24 hex>`)."""
        if agent_id in self.sessions:
            return self.sessions[agent_id]
        if agent_id == self.primary_agent_id or not self.primary_agent_id:
            return self.primary_session_id
        return subagent_session_id(self.primary_session_id, agent_id)

    def connect(self) -> None:
        """Ask the server who its agents are; choose the starting agent and session."""
        health = self.client.health()
        deployment = health.get("deployment") or {}
        self.primary_agent_id = str(deployment.get("primary_agent_id") or "")
        self.agent_ids = [str(a.get("agent_id")) for a in deployment.get("agents") or [] if a.get("agent_id")]
        agent = self.requested_agent or self.primary_agent_id
        if not agent:
            raise ClientError("the server reported no primary agent")
        if self.agent_ids and agent not in self.agent_ids:
            raise ClientError(f"unknown agent '{agent}' (agents: {', '.join(self.agent_ids)})")
        self.agent_id = agent
        self.primary_session_id = str(uuid.uuid4())
        if self.requested_session:
            if agent == self.primary_agent_id:
                self.primary_session_id = self.requested_session
            else:
                self.sessions[agent] = self.requested_session

    # -- running -------------------------------------------------------------------------------

    def run(self) -> int:
        """Read and handle lines until /exit, Ctrl-D or two Ctrl-C in a row. Returns an exit code."""
        if not self.agent_id:
            try:
                self.connect()
            except ClientError as exc:
                self.console.print(Text(str(exc), style="bold red"))
                return 1
        self.console.print(Text(self.banner or f"{self.app_name} REPL · {self.client.base_url}", style="bold cyan"))
        self.console.print(Text(f"agent {self.agent_id} · session {self.session_id} · /help for commands, "
                                "Ctrl-D to exit", style="dim"))
        self._presses = 0
        while self._presses < 2:
            try:
                self._turn()
            except KeyboardInterrupt:
                # A Ctrl-C between prompts (while a line was printed, or before the next prompt
                # took the terminal) is one more press at the prompt, not a crash.
                self._presses += 1
            except (ExitRepl, EOFError):
                break
        try:
            self.console.print(Text("Bye.", style="dim"))
        except KeyboardInterrupt:
            pass
        return 0

    def _turn(self) -> None:
        """Read one line and handle it; `_presses` counts the Ctrl-C pressed in a row at the prompt."""
        try:
            line = self.input.read(f"{self.agent_id}> ")
        except KeyboardInterrupt:
            self._presses += 1  # before printing: a second press during the print must find it counted
            if self._presses < 2:
                self.console.print(Text("(press Ctrl-C again or Ctrl-D to exit)", style="dim"))
            return
        self._presses = 0
        try:
            self.handle(line)
        except KeyboardInterrupt:
            self.console.print(Text("interrupted", style="yellow"))
        except UsageError as exc:
            self.console.print(Text(str(exc), style="yellow"))
        except ClientError as exc:
            self.console.print(Text(str(exc), style="bold red"))

    def handle(self, line: str) -> None:
        line = line.strip()
        if not line:
            return
        if line.startswith("/"):
            name, _, args = line.partition(" ")
            command = self._lookup.get(name.lower())
            if command is None:
                raise UsageError(f"unknown command {name} (try /help)")
            command.handler(self, args.strip())
            return
        self.ask(line)

    def ask(self, message: str, *, agent_id: str | None = None, session_id: str | None = None) -> Outcome:
        """Send `message` to an agent (default: the current one), follow and render it to the end.

        Ctrl-C cancels the request, also when it comes while the request is being submitted:
        raised there, it left a request the server had accepted running with nobody following it."""
        agent = agent_id or self.agent_id
        session = session_id or self.session_for(agent)
        follower = self.follower
        spinner = Spinner(self.console)
        spinner.start("Submitting…")
        try:
            with ctrl_c_noted() as pressed:
                accepted = self.client.submit(agent, message, session_id=session, tokens=self.console.is_terminal)
        finally:
            spinner.stop()
        if accepted.get("warning"):  # e.g. no worker has been seen: it would sit queued without a word
            self.console.print(Text(f"warning: {accepted['warning']}", style="yellow"))
        state = _StreamState(agent_id=agent, request_id=str(accepted.get("request_id")),
                             session_id=accepted.get("session_id") or session)
        try:
            if pressed():
                outcome = follower.cancel(state)
            else:
                outcome = follower.follow_request(state.agent_id, state.request_id, session_id=state.session_id)
        except KeyboardInterrupt:
            # Pressed before the follower was listening for it (or while it was cancelling).
            outcome = follower.cancel(state)
        self.last_outcome = outcome
        return outcome

    def completion_words(self, text: str) -> list[str]:
        parts = text.split(" ")
        if len(parts) == 1:
            return list(self._lookup)
        head = parts[0].lower()
        if head == "/use" and len(parts) == 2:
            return self.agent_ids
        if head == "/workflow":
            if len(parts) == 2:
                return ["list", "run", "status"]
            if len(parts) == 3 and parts[1] in ("run", "status"):
                return self.workflow_ids
        return []

    def help_table(self) -> Table:
        table = Table(box=box.SIMPLE_HEAD, show_edge=False)
        table.add_column("Command", style="bold cyan", no_wrap=True)
        table.add_column("What it does")
        for command in self.commands.values():
            usage = command.usage or command.name
            aliases = f" (also {', '.join(command.aliases)})" if command.aliases else ""
            table.add_row(Text(usage), Text(command.help + aliases))
        return table


@contextmanager
def ctrl_c_noted():
    """Within: the first Ctrl-C is noted rather than raised, so a call under way can finish
    (a submit, whose request can then be cancelled); a second one raises as usual, so a
    server that does not answer cannot hold the user. Yields `pressed()`."""
    presses: list[int] = []
    previous = signal.getsignal(signal.SIGINT)
    if threading.current_thread() is not threading.main_thread() or not callable(previous):
        yield lambda: False  # signal handlers can only be set from the main thread
        return

    def note(signum, frame):
        presses.append(signum)
        signal.signal(signal.SIGINT, previous)

    signal.signal(signal.SIGINT, note)
    try:
        yield lambda: bool(presses)
    finally:
        signal.signal(signal.SIGINT, previous)


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name.lower()).strip("_") or "mash"


# -- built-in commands --------------------------------------------------------------------------


def cmd_help(repl: Repl, args: str) -> None:
    repl.console.print(repl.help_table())
    repl.console.print(Text("Anything else is sent to the current agent. Ctrl-C cancels a running request.",
                            style="dim"))


def cmd_exit(repl: Repl, args: str) -> None:
    raise ExitRepl


def cmd_clear(repl: Repl, args: str) -> None:
    repl.console.clear()


def cmd_status(repl: Repl, args: str) -> None:
    health = repl.client.health()
    deployment = health.get("deployment") or {}
    info = repl.client.session(repl.agent_id, repl.session_id)
    console = repl.console
    console.print(f"[bold]Server[/]   {escape(repl.client.base_url)} ({escape(str(health.get('service')))}, "
                  f"{escape(str(health.get('status')))})")
    console.print(f"[bold]Primary[/]  {escape(str(deployment.get('primary_agent_id')))}")
    console.print(f"[bold]Agent[/]    {escape(repl.agent_id)}")
    console.print(f"[bold]Session[/]  {escape(repl.session_id)}")
    console.print(f"[bold]Model[/]    {escape(str(info.get('model')))} (max {info.get('max_steps')} steps)")
    console.print(f"[bold]Tokens[/]   {info.get('session_total_tokens') or 0} in this session")


def cmd_agents(repl: Repl, args: str) -> None:
    data = repl.client.agents()
    agents = data.get("agents") or []
    repl.agent_ids = [str(a.get("agent_id")) for a in agents if a.get("agent_id")]
    repl.console.print(agents_table(agents, data.get("primary_agent_id"), current=repl.agent_id))


def cmd_session(repl: Repl, args: str) -> None:
    info = repl.client.session(repl.agent_id, repl.session_id)
    console = repl.console
    for label, key in (("Agent", "agent_id"), ("Session", "session_id"), ("Model", "model"),
                       ("Max steps", "max_steps"), ("Tokens", "session_total_tokens")):
        console.print(f"[bold]{label:<9}[/] {escape(str(info.get(key)))}")
    if info.get("subagent_ids") and repl.agent_id == repl.primary_agent_id:
        console.print(f"[bold]Subagents[/] {escape(', '.join(info['subagent_ids']))}")


def cmd_sessions(repl: Repl, args: str) -> None:
    sessions = repl.client.sessions(repl.agent_id)
    if not sessions:
        repl.console.print(Text(f"No sessions for {repl.agent_id} yet.", style="yellow"))
        return
    repl.console.print(sessions_table(sessions, current=repl.session_id))


def cmd_history(repl: Repl, args: str) -> None:
    limit = None
    if args:
        try:
            limit = int(args.split()[0])
        except ValueError:
            raise UsageError("usage: /history [N]  (N: how many recent turns)") from None
        if limit < 1:
            raise UsageError("usage: /history [N]  (N must be at least 1)")
    turns = repl.client.history(repl.agent_id, repl.session_id, limit=limit)
    render_turns(repl.console, turns)


def cmd_compact(repl: Repl, args: str) -> None:
    from rich.markdown import Markdown

    with repl.console.status("compacting the session…"):
        result = repl.client.compact(repl.agent_id, repl.session_id)
    repl.console.print(Text(f"Session compacted into turn {result.get('turn_id')}; history now starts from "
                            "this summary.", style="green"))
    repl.console.print(Markdown(str(result.get("summary_text", ""))))


def cmd_use(repl: Repl, args: str) -> None:
    target = args.split()[0] if args.split() else ""
    if not target:
        raise UsageError(f"usage: /use <agent>  (agents: {', '.join(repl.agent_ids) or '?'})")
    if target not in repl.agent_ids:
        repl.agent_ids = [str(a.get("agent_id")) for a in repl.client.agents().get("agents") or []]
        if target not in repl.agent_ids:
            raise UsageError(f"unknown agent '{target}' (agents: {', '.join(repl.agent_ids)})")
    repl.agent_id = target
    role = "primary agent" if target == repl.primary_agent_id else "subagent"
    repl.console.print(Text(f"Now talking to {target} ({role}), session {repl.session_id}", style="cyan"))


def parse_workflow_args(args: str) -> tuple[str, list[str], Any]:
    """`run wf dedup --input {"a": 1}` -> ("run", ["wf", "dedup"], {"a": 1})."""
    head, marker, raw = args.partition("--input")
    payload = None
    if marker:
        raw = raw.strip()
        if raw.startswith("="):
            raw = raw[1:].strip()
        if not raw:
            raise UsageError("--input needs a JSON value")
        try:
            payload = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise UsageError(f"--input is not valid JSON: {exc}") from None
    words = head.split()
    if not words:
        return "", [], payload
    return words[0].lower(), words[1:], payload


WORKFLOW_USAGE = "usage: /workflow list | run <id> [dedup_key] [--input JSON] | status <id> <run_id>"


def cmd_workflow(repl: Repl, args: str) -> None:
    action, rest, payload = parse_workflow_args(args)
    client, console = repl.client, repl.console
    if action in ("", "list"):
        workflows = client.workflows()
        repl.workflow_ids = [str(w.get("workflow_id")) for w in workflows]
        if not workflows:
            console.print(Text("No workflows on this server.", style="yellow"))
        else:
            console.print(workflows_table(workflows))
    elif action == "run":
        if not rest or len(rest) > 2:
            raise UsageError(WORKFLOW_USAGE)
        run = client.run_workflow(rest[0], dedup_key=rest[1] if len(rest) > 1 else None, input=payload)
        console.print(f"Started run [bold]{escape(str(run.get('run_id')))}[/] of {escape(str(run.get('workflow_id')))} "
                      f"({escape(str(run.get('status')))})")
        repl.follower.follow_workflow(str(run.get("workflow_id") or rest[0]), str(run.get("run_id")))
    elif action == "status":
        if len(rest) != 2:
            raise UsageError(WORKFLOW_USAGE)
        render_run(console, client.workflow_run(rest[0], rest[1]))
    else:
        raise UsageError(WORKFLOW_USAGE)


def default_commands() -> list[SlashCommand]:
    return [
        SlashCommand("/help", cmd_help, "Show the commands"),
        SlashCommand("/exit", cmd_exit, "Leave the REPL (also Ctrl-D)", aliases=("/quit",)),
        SlashCommand("/clear", cmd_clear, "Clear the screen"),
        SlashCommand("/status", cmd_status, "Server health, current agent, session, model and tokens"),
        SlashCommand("/agents", cmd_agents, "List the agents (* = current)"),
        SlashCommand("/session", cmd_session, "Show the current session"),
        SlashCommand("/sessions", cmd_sessions, "List the current agent's sessions"),
        SlashCommand("/history", cmd_history, "Show the last N turns of this session", usage="/history [N]"),
        SlashCommand("/compact", cmd_compact, "Summarise this session's turns into a checkpoint (resets its tokens)"),
        SlashCommand("/use", cmd_use, "Talk to another agent (a subagent uses its session for this REPL's session)",
                     usage="/use <agent>"),
        SlashCommand("/workflow", cmd_workflow, "list | run <id> [dedup_key] [--input JSON] (starts a run and "
                     "follows it) | status <id> <run_id>", usage="/workflow ..."),
    ]
