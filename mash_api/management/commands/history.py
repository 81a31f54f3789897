"""`mash history`: the turns of one session."""

from __future__ import annotations

from django.core.management.base import CommandError

from mash_api.cli.base import ClientCommand
from mash_api.cli.render import render_turns


class Command(ClientCommand):
    help = "Show a session's conversation: the last turns, oldest first."
    agent_help = "Whose session (default: the saved agent, else the server's primary agent)."

    def add_command_arguments(self, parser):
        parser.add_argument("--session-id", metavar="SESSION_ID", required=True,
                            help="The session to show (see 'mash sessions').")
        parser.add_argument("--limit", metavar="N", type=int, default=None,
                            help="Show only the last N turns (server default: 20, at most 1000).")

    def run(self, client, connection, *, session_id, limit=None, **options):
        if limit is not None and limit < 1:
            raise CommandError("--limit must be at least 1")
        agent_id = self.agent_for(client, connection)
        render_turns(self.console, client.history(agent_id, session_id, limit=limit))
