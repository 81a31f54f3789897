"""The environment a tool's child process gets: the server's basics, never its secrets.

A server runs with its own credentials in its environment (`MASH_API_KEY`,
`ANTHROPIC_API_KEY`, `DATABASE_URL`, ...). A shell or an MCP stdio server started for a
model must not inherit them: a model told to run `env` would print them. So a tool starts
from nothing and gets:

- the allow-listed basics from the server's environment (`SAFE_ENV_NAMES`, `LC_*`),
- the server variables its configuration names in `pass_env`,
- the literal values its configuration gives in `env` (these override the rest).

Anything whose name looks like a secret (`DENIED_ENV_PATTERNS`) never comes from the
server's environment, even when an allow-list entry would admit it; naming one in
`pass_env` is a `ConfigError`. A literal value in `env` is the app developer's own choice
and is kept whatever its name.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from fnmatch import fnmatchcase

from mash_core.errors import ConfigError

SAFE_ENV_NAMES: frozenset[str] = frozenset(
    {"PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LANGUAGE", "TERM", "TMPDIR", "TZ"}
)
SAFE_ENV_PATTERNS: tuple[str, ...] = ("LC_*",)

# Matched against the upper-cased name, and also against it without a trailing `_FILE`:
# ANTHROPIC_API_KEY_FILE points at the key, and a tool that knows where it is can read it.
DENIED_ENV_PATTERNS: tuple[str, ...] = (
    "MASH_*",
    "DATABASE_URL",
    "*_DATABASE_URL",
    "*_API_KEY",
    "*_SECRET*",
    "SECRET_*",
    "*_TOKEN",
    "*_PASSWORD",
    "*_KEY",
    # Beyond the usual suffixes: PGPASSWORD, GOOGLE_APPLICATION_CREDENTIALS, SENTRY_DSN.
    "*PASSWORD*",
    "*PASSWD*",
    "*CREDENTIAL*",
    "*_DSN",
)

_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def is_secret_env_name(name: str) -> bool:
    """True when a variable of this name must not reach a tool from the server's environment."""
    upper = name.upper()
    candidates = {upper, upper[:-5]} if upper.endswith("_FILE") else {upper}
    return any(fnmatchcase(c, p) for c in candidates for p in DENIED_ENV_PATTERNS)


def check_tool_env(env: Mapping[str, str] | None = None, pass_env: Iterable[str] = (), *, owner: str = "tool") -> None:
    """Raise ConfigError for what `tool_environment` would refuse; tools call it at construction."""
    for name, value in (env or {}).items():
        if not isinstance(name, str) or not _NAME_RE.match(name):
            raise ConfigError(f"{owner} env: {name!r} is not a valid environment variable name")
        if not isinstance(value, str) or "\x00" in value:
            raise ConfigError(f"{owner} env[{name!r}] must be a string without NUL bytes")
    if isinstance(pass_env, str):
        raise ConfigError(f"{owner} pass_env must be a list of variable names, not one string")
    for name in pass_env:
        if not isinstance(name, str) or not _NAME_RE.match(name):
            raise ConfigError(f"{owner} pass_env: {name!r} is not a valid environment variable name")
        if is_secret_env_name(name):
            raise ConfigError(
                f"{owner} pass_env names {name}, which looks like a secret of the server's "
                f"(patterns: {', '.join(DENIED_ENV_PATTERNS)}); tools never inherit those. If the "
                f"tool really needs a credential, give it one of its own with env={{{name!r}: ...}}"
            )


def tool_environment(env: Mapping[str, str] | None = None, pass_env: Iterable[str] = ()) -> dict[str, str]:
    """The environment for a tool's child process, read from `os.environ` now.

    `pass_env` names server variables to pass through when they are set (a missing one is
    skipped); `env` gives literal values. Raises ConfigError for an invalid name or for a
    `pass_env` name that looks like a secret.
    """
    pass_env = tuple(pass_env) if not isinstance(pass_env, str) else pass_env
    check_tool_env(env, pass_env)
    source = os.environ
    result = {
        name: value
        for name, value in source.items()
        if (name in SAFE_ENV_NAMES or any(fnmatchcase(name, p) for p in SAFE_ENV_PATTERNS))
        and not is_secret_env_name(name)
    }
    for name in pass_env:
        if name in source:
            result[name] = source[name]
    result.update(env or {})
    return result
