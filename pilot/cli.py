"""`pilot repl`: the Mash REPL against the configured server, plus `/changelog [N]`.

`/changelog N` publishes the changelog skill and the `pilot-changelog` workflow to the
server the first time it is used (they are stored, so later sessions find them), runs
the workflow for the last N commits, follows the run, and prints its Markdown.
"""

from __future__ import annotations

import sys
from typing import Sequence

from rich.markdown import Markdown

from mash_api.cli import Repl, SlashCommand, UsageError, repl_main
from pilot.spec import changelog_skill

PILOT_AGENT = "pilot"
CHANGELOG_WORKFLOW = "pilot-changelog"
CHANGELOG_SCHEMA = {
    "type": "object",
    "properties": {"markdown": {"type": "string", "description": "The changelog as Markdown."}},
    "required": ["markdown"],
}
DEFAULT_COMMITS = 10
MAX_COMMITS = 500


def ensure_published(client) -> bool:
    """Publish the skill and workflow unless the server already has them; True if it published."""
    if any(w.get("workflow_id") == CHANGELOG_WORKFLOW for w in client.workflows()):
        return False
    skill = changelog_skill()
    client.call("POST", f"/agent/{PILOT_AGENT}/skill", json_body={
        "type": "inline", "name": skill.name, "description": skill.description, "content": skill.content})
    client.call("POST", f"/agent/{PILOT_AGENT}/workflow", json_body={
        "workflow_id": CHANGELOG_WORKFLOW,
        "tasks": [{"task_id": "changelog", "agent_id": PILOT_AGENT, "structured_output": CHANGELOG_SCHEMA}],
        "task_message": {"skill_name": skill.name},
        "metadata": {"published_by": "pilot repl"},
    })
    return True


def changelog(repl: Repl, args: str) -> None:
    """Summarise the last N commits (default 10) with the changelog skill."""
    words = args.split()
    count = DEFAULT_COMMITS
    if words:
        try:
            count = int(words[0])
        except ValueError:
            raise UsageError("usage: /changelog [N]  (N: how many recent commits)") from None
    if not 1 <= count <= MAX_COMMITS or len(words) > 1:
        raise UsageError(f"usage: /changelog [N]  (1 <= N <= {MAX_COMMITS})")
    repl.console.print(f"[bold cyan]Changelog of the last {count} commits[/] [dim](workflow {CHANGELOG_WORKFLOW})[/]")
    if ensure_published(repl.client):
        repl.console.print(f"[dim]published the changelog skill and the {CHANGELOG_WORKFLOW} workflow[/]")
    started = repl.client.run_workflow(CHANGELOG_WORKFLOW, input={"commits": count})
    repl.follower.follow_workflow(CHANGELOG_WORKFLOW, started["run_id"])
    run = repl.client.workflow_run(CHANGELOG_WORKFLOW, started["run_id"])
    if run.get("status") != "completed":
        repl.console.print(f"[red]changelog run {run.get('status')}: {run.get('error') or 'no output'}[/]")
        return
    state = ((run.get("output") or {}).get("task_states") or {}).get("changelog") or {}
    repl.console.print(Markdown(str(state.get("markdown", ""))))


COMMANDS = [
    SlashCommand("/changelog", changelog, usage="/changelog [N]",
                 help="Summarise the last N commits (default 10) with the pilot agent's changelog skill"),
]

USAGE = """usage: pilot repl [--api-base-url URL] [--api-key KEY] [--agent AGENT_ID] [--session-id SESSION_ID]

Pilot's client. Commands:
  repl    the Mash REPL against the configured server (see 'mash connect'), plus /changelog [N]
"""


def main(argv: Sequence[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(USAGE, end="")
        sys.exit(0 if args else 2)
    if args[0] != "repl":
        print(f"pilot: unknown command {args[0]!r}\n{USAGE}", end="", file=sys.stderr)
        sys.exit(2)
    sys.exit(repl_main(args[1:], prog="pilot repl", app_name="pilot", commands=COMMANDS,
                       description="Pilot's REPL: the Mash REPL plus /changelog [N]."))


if __name__ == "__main__":
    main()
