"""`mash status`: the server's health, agents, model and token counts."""

from __future__ import annotations

from rich.markup import escape

from mash_api.cli.base import ClientCommand


class Command(ClientCommand):
    help = "Show the server's health: service, primary agent, agents, model and the session token count."
    agent_help = "Also show this agent's default session (default: the saved agent, else the primary agent)."

    def run(self, client, connection, **options):
        health = client.health()
        deployment = health.get("deployment") or {}
        primary = health.get("primary_agent") or {}
        agents = deployment.get("agents") or []
        agent_id = connection.agent_id or deployment.get("primary_agent_id")
        info = primary if agent_id == primary.get("agent_id") else client.agent(agent_id).get("session", {})
        c = self.console
        c.print(f"[bold]Server[/]          {escape(client.base_url)}")
        c.print(f"[bold]Service[/]         {escape(str(health.get('service')))} "
                f"({escape(str(health.get('status')))}, API {escape(str(health.get('api_version')))})")
        c.print(f"[bold]Primary agent[/]   {escape(str(deployment.get('primary_agent_id')))}")
        names = ", ".join(f"{a.get('agent_id')} ({a.get('role')})" for a in agents)
        c.print(f"[bold]Agents[/]          {len(agents)}: {escape(names)}")
        c.print(f"[bold]Agent[/]           {escape(str(agent_id))}")
        c.print(f"[bold]Model[/]           {escape(str(info.get('model')))} (max {info.get('max_steps')} steps)")
        c.print(f"[bold]Session[/]         {escape(str(info.get('session_id')))}")
        c.print(f"[bold]Session tokens[/]  {info.get('session_total_tokens') or 0}")
        self.print_workers(health.get("workers"))

    def print_workers(self, workers) -> None:
        c = self.console
        if not isinstance(workers, dict):  # a server that does not report them
            return
        if workers.get("warning"):
            c.print(f"[bold]Workers[/]         [yellow]{escape(str(workers['warning']))}[/]")
            return
        c.print(f"[bold]Workers[/]         {workers.get('live')} live, {workers.get('in_use')} of "
                f"{workers.get('slots')} slots in use")
        for proc in workers.get("processes") or []:
            state = " (draining)" if proc.get("draining") else ""
            c.print(f"                  {escape(str(proc.get('hostname')))}:{proc.get('pid')}  "
                    f"{proc.get('in_use')}/{proc.get('slots')} in use, seen {proc.get('last_seen_seconds_ago')} s ago"
                    f"{state}")
