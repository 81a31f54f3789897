"""Argument helpers shared by the management commands and host-app entry points."""

from __future__ import annotations

import argparse
import sys
from typing import Iterable, Mapping, Sequence

from mash_api.client import ClientError, MashClient
from mash_api.cli.config import ENV_API_KEY, ENV_BASE_URL, ConfigMissing, Connection, config_path, resolve_connection


def add_connection_arguments(parser, *, agent_help: str | None = None, agent: bool = True) -> None:
    """`--api-base-url`, `--api-key`, `--agent` with their help (flags beat env beat the saved file)."""
    parser.add_argument(
        "--api-base-url", metavar="URL", default=None,
        help=f"Server root, e.g. http://127.0.0.1:8000 (default: ${ENV_BASE_URL}, else the URL saved by "
             f"'mash connect' in {config_path()}).",
    )
    parser.add_argument(
        "--api-key", metavar="KEY", default=None,
        help=f"API key, sent as 'Authorization: Bearer KEY' (default: ${ENV_API_KEY}, else the saved key).",
    )
    if not agent:
        return
    parser.add_argument(
        "--agent", metavar="AGENT_ID", default=None,
        help=agent_help or "Agent to address (default: the saved agent, else the server's primary agent).",
    )


def open_client(connection: Connection) -> MashClient:
    return MashClient(connection.api_base_url, connection.api_key)


def repl_main(
    argv: Sequence[str] | None = None,
    *,
    prog: str = "mash repl",
    app_name: str = "mash",
    commands: Iterable | Mapping | None = None,
    default_agent: str | None = None,
    description: str | None = None,
) -> int:
    """A complete REPL entry point for a host app: parse flags, connect, run. Returns the exit code."""
    from mash_api.cli.repl import Repl

    parser = argparse.ArgumentParser(prog=prog, description=description or "Talk to a Mash server interactively.")
    add_connection_arguments(parser, agent_help=(
        f"Agent to talk to (default: the saved agent, else {default_agent})" if default_agent else None))
    parser.add_argument("--session-id", metavar="SESSION_ID", default=None,
                        help="Continue this session (default: a new session for each REPL start).")
    args = parser.parse_args(argv)
    try:
        connection = resolve_connection(args.api_base_url, args.api_key, args.agent)
        client = open_client(connection)
    except (ConfigMissing, ClientError) as exc:
        print(str(exc), file=sys.stderr)
        return 1
    with client:
        repl = Repl(client, agent_id=connection.agent_id or default_agent, session_id=args.session_id,
                    commands=commands, app_name=app_name)
        try:
            repl.connect()
        except ClientError as exc:
            print(str(exc), file=sys.stderr)
            return 1
        return repl.run()
