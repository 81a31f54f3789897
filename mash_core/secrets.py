"""Secrets from the environment or from a file: `NAME`, or else the file `NAME_FILE` names.

A file keeps a key out of `ps` and out of environment listings (Docker and Kubernetes
secrets are mounted as files). mash_project/settings.py reads its own settings the same
way through django-environ's `FileAwareEnv`, and can take its NAME_FILE reading from here
(`read_secret(key, self.env, error=ImproperlyConfigured)`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from mash_core.errors import ConfigError


def read_secret(name: str, environ: Mapping[str, str] | None = None, *,
                error: type[Exception] = ConfigError) -> str | None:
    """The secret `name`, or None when neither `name` nor `name_FILE` is set in `environ`
    (the process's environment by default).

    Raises `error` (ConfigError; settings.py passes ImproperlyConfigured), naming the variable
    and the path, never the value, when both are set, or when the file cannot be read or is
    empty. One trailing newline is dropped: the files `echo` and secret stores write end with one.
    """
    environ = os.environ if environ is None else environ
    value = environ.get(name) or ""
    path = environ.get(f"{name}_FILE") or ""
    if value and path:
        # Neither may silently win: a stale variable would shadow the rotated file, or the reverse.
        raise error(f"both {name} and {name}_FILE are set: set only one of them")
    if value:
        return value
    if not path:
        return None
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except (OSError, UnicodeDecodeError) as exc:
        # A decode error's text quotes the bytes it choked on: report only its kind.
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        raise error(f"{name}_FILE names {path!r}, which cannot be read: {reason}") from None
    text = text.removesuffix("\n").removesuffix("\r")
    if not text:
        raise error(f"{name}_FILE names {path!r}, which is empty")
    return text
