"""`mash connect`: save the server to talk to in ~/.mash/cli.json (no network call)."""

from __future__ import annotations

from urllib.parse import urlsplit

from django.core.management.base import CommandError
from rich.markup import escape

from mash_api.client import normalize_base_url
from mash_api.cli.base import ClientCommand
from mash_api.cli.config import CliConfig, save_config


class Command(ClientCommand):
    help = (
        "Save the server the client commands talk to (~/.mash/cli.json: api_base_url, api_key, agent_id). "
        "Makes no network call; later flags and MASH_API_BASE_URL / MASH_API_KEY override what is saved."
    )
    connection_arguments = False

    def add_command_arguments(self, parser):
        parser.add_argument("--api-base-url", metavar="URL", required=True,
                            help="Server root, e.g. http://127.0.0.1:8000 (a trailing /api/v1 is accepted).")
        parser.add_argument("--api-key", metavar="KEY", default=None,
                            help="API key to send as 'Authorization: Bearer KEY' (omit for an open server).")
        parser.add_argument("--agent", metavar="AGENT_ID", default=None,
                            help="Default agent for sessions, history and the REPL (default: the server's primary).")

    def run(self, client, connection, *, api_base_url, api_key=None, agent=None, **options):
        url = normalize_base_url(api_base_url)
        if not url.startswith(("http://", "https://")) or not urlsplit(url).netloc:
            raise CommandError(f"--api-base-url must be an http(s) URL, got {api_base_url!r}")
        config = CliConfig(api_base_url=url, api_key=(api_key or "").strip() or None,
                           agent_id=(agent or "").strip() or None)
        path = save_config(config)
        key = "none" if not config.api_key else f"saved ({len(config.api_key)} characters, not shown)"
        self.console.print(f"Saved connection to [bold]{escape(str(path))}[/]")
        self.console.print(f"  server: {escape(url)}")
        self.console.print(f"  key:    {escape(key)}")
        self.console.print(f"  agent:  {escape(config.agent_id or '(the primary agent)')}")
