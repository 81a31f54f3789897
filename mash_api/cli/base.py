"""The base of the client management commands (`mash status`, `python manage.py agents`, ...).

They talk to a server over HTTP and never touch the local database. A failure is one
line on stderr (the `CommandError` text, without Django's class-name prefix) and exit
status 1.
"""

from __future__ import annotations

import sys

from django.core.management.base import BaseCommand, CommandError

from mash_api.client import ClientError, MashClient
from mash_api.cli.config import ConfigMissing, Connection, resolve_connection
from mash_api.cli.main import add_connection_arguments, open_client
from mash_api.cli.render import make_console


# Django's flags that mean nothing to a command talking HTTP: still accepted, not shown.
DJANGO_FLAGS = {"--settings", "--pythonpath", "--traceback", "--no-color", "--force-color", "--skip-checks",
                "--verbosity", "--version"}


class ClientCommand(BaseCommand):
    suppressed_base_arguments = DJANGO_FLAGS
    requires_system_checks: list = []
    requires_migrations_checks = False
    connection_arguments = True
    agent_help: str | None = None

    def add_arguments(self, parser):
        if self.connection_arguments:
            add_connection_arguments(parser, agent_help=self.agent_help)
        self.add_command_arguments(parser)

    def add_command_arguments(self, parser) -> None:
        pass

    def execute(self, *args, **options):
        try:
            return super().execute(*args, **options)
        except CommandError as exc:
            if not getattr(self, "_called_from_command_line", False) or options.get("traceback"):
                raise
            self.stderr.write(str(exc))
            sys.exit(exc.returncode)

    def handle(self, *args, **options):
        out = getattr(self.stdout, "_out", self.stdout)
        self.console = make_console(out, no_color=bool(options.get("no_color")))
        if options.get("force_color"):
            self.console.force_terminal = True
        try:
            if not self.connection_arguments:
                return self.run(None, None, **options)
            self.connection = resolve_connection(options.get("api_base_url"), options.get("api_key"),
                                                 options.get("agent"))
            with open_client(self.connection) as client:
                return self.run(client, self.connection, **options)
        except (ClientError, ConfigMissing) as exc:
            raise CommandError(str(exc)) from None

    def run(self, client: MashClient | None, connection: Connection | None, **options) -> None:
        raise NotImplementedError

    @staticmethod
    def agent_for(client: MashClient, connection: Connection) -> str:
        if connection.agent_id:
            return connection.agent_id
        agent = (client.health().get("deployment") or {}).get("primary_agent_id")
        if not agent:
            raise ClientError("the server reported no primary agent")
        return str(agent)
