"""`pilot repl`: the Mash REPL against the configured server, plus `/changelog [N]`.

`/changelog N` asks the `pilot` agent to use its changelog skill on the last N commits
and prints the Markdown answer. (It is a plain request today; a workflow-backed
version can replace the handler without changing the command.)
"""

from __future__ import annotations

import sys
from typing import Sequence

from mash_api.cli import Repl, SlashCommand, UsageError, repl_main

PILOT_AGENT = "pilot"
DEFAULT_COMMITS = 10
MAX_COMMITS = 500


def changelog_message(count: int) -> str:
    return f"Use the changelog skill to summarise the last {count} commits"


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
    repl.console.print(f"[bold cyan]Changelog of the last {count} commits[/] [dim](asking {PILOT_AGENT})[/]")
    repl.ask(changelog_message(count), agent_id=PILOT_AGENT)


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
