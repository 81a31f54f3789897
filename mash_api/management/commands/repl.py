"""`mash repl`: talk to a server's agents interactively."""

from __future__ import annotations

from django.core.management.base import CommandError

from mash_api.cli.base import ClientCommand
from mash_api.cli.repl import Repl


class Command(ClientCommand):
    help = (
        "Interactive session: plain text goes to the agent and its progress streams back; /help lists the "
        "slash commands. Ctrl-C cancels a running request; Ctrl-D (or Ctrl-C twice) exits. Reads lines from "
        "stdin when it is not a terminal."
    )
    agent_help = "Agent to talk to first (default: the saved agent, else the server's primary agent)."

    def add_command_arguments(self, parser):
        parser.add_argument("--session-id", metavar="SESSION_ID", default=None,
                            help="Continue this session (default: a new session for each REPL start).")

    def run(self, client, connection, *, session_id=None, **options):
        repl = Repl(client, agent_id=connection.agent_id, session_id=session_id, console=self.console)
        repl.connect()
        code = repl.run()
        if code:
            raise CommandError("the REPL ended with an error", returncode=code)
