"""The client side of Mash: `mash connect|status|agents|sessions|history|repl|workflow`.

Public names:

- `MashClient` (in `mash_api.client`): the HTTP client.
- `Repl`, `SlashCommand`: the interactive REPL and its extension point for host apps.
- `Outcome`: what `Repl.ask()` returns.
- `CliConfig`, `load_config`, `save_config`, `resolve_connection`: `~/.mash/cli.json`
  and the flag > environment > file precedence.
- `add_connection_arguments`, `repl_main`: build a host app's own REPL entry point
  (see `pilot/cli.py`).

Nothing here needs Django; the management commands wrap it.
"""

from mash_api.cli.config import CliConfig, ConfigMissing, Connection, config_path, load_config, resolve_connection, save_config
from mash_api.cli.follow import Outcome
from mash_api.cli.main import add_connection_arguments, open_client, repl_main
from mash_api.cli.repl import ExitRepl, Repl, SlashCommand, UsageError

__all__ = [
    "CliConfig",
    "ConfigMissing",
    "Connection",
    "ExitRepl",
    "Outcome",
    "Repl",
    "SlashCommand",
    "UsageError",
    "add_connection_arguments",
    "config_path",
    "load_config",
    "open_client",
    "repl_main",
    "resolve_connection",
    "save_config",
]
