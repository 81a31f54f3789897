"""`mash sessions`: an agent's sessions, newest activity first."""

from __future__ import annotations

from rich.markup import escape

from mash_api.cli.base import ClientCommand
from mash_api.cli.render import sessions_table


class Command(ClientCommand):
    help = "List an agent's sessions (turns, tokens, last activity), newest first."
    agent_help = "Whose sessions (default: the saved agent, else the server's primary agent)."

    def run(self, client, connection, **options):
        agent_id = self.agent_for(client, connection)
        sessions = client.sessions(agent_id)
        if not sessions:
            self.console.print(f"[yellow]No sessions for {escape(agent_id)} yet.[/]")
            return
        self.console.print(f"Sessions of [bold]{escape(agent_id)}[/]:")
        self.console.print(sessions_table(sessions))
