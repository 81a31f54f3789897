"""Exceptions shared across the SDK."""


class MashError(Exception):
    """Base of every error raised by mash_core."""


class ConfigError(MashError, ValueError):
    """An agent, tool or host definition is invalid; the message says how to fix it."""
