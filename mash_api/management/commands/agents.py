"""`mash agents`: the agents a client may address."""

from __future__ import annotations

from mash_api.cli.base import ClientCommand
from mash_api.cli.render import agents_table


class Command(ClientCommand):
    help = "List the server's agents (primary and subagents) as a table."
    agent_help = "Mark this agent in the table (default: the saved agent)."

    def run(self, client, connection, **options):
        data = client.agents()
        agents = data.get("agents") or []
        if not agents:
            self.console.print("[yellow]The server lists no agents.[/]")
            return
        self.console.print(agents_table(agents, data.get("primary_agent_id"), current=connection.agent_id))
