"""`mash workflow list|run|status`."""

from __future__ import annotations

import json

from django.core.management.base import CommandError
from rich.markup import escape

from mash_api.cli.base import ClientCommand
from mash_api.cli.follow import Follower
from mash_api.cli.main import add_connection_arguments
from mash_api.cli.lineinput import PipeInput, TerminalInput, stdin_is_terminal
from mash_api.cli.render import render_run, workflows_table


class Command(ClientCommand):
    help = "Workflows: list them, start a run (and follow its events), or show a run."

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="action", metavar="{list,run,status}", required=True)
        listing = sub.add_parser("list", help="List the server's workflows and their tasks.",
                                 description="List the server's workflows and their tasks.")
        run = sub.add_parser("run", help="Start a run and follow its events until it ends.",
                             description="Start a workflow run and follow its events until it ends.")
        run.add_argument("workflow_id", metavar="WORKFLOW_ID", help="The workflow to run (see 'workflow list').")
        run.add_argument("--dedup-key", metavar="KEY", default=None,
                         help="Refuse to start while another run with this key is active (409 names it).")
        run.add_argument("--input", metavar="JSON", default=None, help="The run's input, a JSON value.")
        run.add_argument("--no-follow", action="store_true", help="Print the run id and return at once.")
        status = sub.add_parser("status", help="Show one run: status, times, error, output.",
                                description="Show one workflow run: status, times, error, output.")
        status.add_argument("workflow_id", metavar="WORKFLOW_ID", help="The workflow.")
        status.add_argument("run_id", metavar="RUN_ID", help="The run (printed by 'workflow run').")
        for p in (listing, run, status):
            add_connection_arguments(p, agent=False)

    def run(self, client, connection, *, action, **options):
        getattr(self, f"run_{action}")(client, **options)

    def run_list(self, client, **options):
        workflows = client.workflows()
        if not workflows:
            self.console.print("[yellow]No workflows on this server.[/]")
            return
        self.console.print(workflows_table(workflows))

    def run_run(self, client, *, workflow_id, dedup_key=None, input=None, no_follow=False, **options):
        payload = None
        if input is not None:
            try:
                payload = json.loads(input)
            except json.JSONDecodeError as exc:
                raise CommandError(f"--input is not valid JSON: {exc}") from None
        run = client.run_workflow(workflow_id, dedup_key=dedup_key, input=payload)
        self.console.print(f"Started run [bold]{escape(str(run.get('run_id')))}[/] of "
                           f"{escape(str(run.get('workflow_id')))} ({escape(str(run.get('status')))})")
        if no_follow:
            return
        line_input = TerminalInput(None) if stdin_is_terminal() else PipeInput(self.console)
        outcome = Follower(client, self.console, line_input).follow_workflow(
            str(run.get("workflow_id") or workflow_id), str(run.get("run_id")))
        if outcome.status not in ("completed", "detached"):
            raise CommandError(f"workflow run {run.get('run_id')} {outcome.status}: {outcome.error}".rstrip(": "))

    def run_status(self, client, *, workflow_id, run_id, **options):
        render_run(self.console, client.workflow_run(workflow_id, run_id))
