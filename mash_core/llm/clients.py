"""SDK clients shared per process: one connection pool per provider configuration (and the
key reading and error classification every provider shares).

A host builds a provider for every run (`AgentSpec.build_llm()`); an SDK client per run
would open a new connection pool, TCP and TLS handshakes included, for every request,
and leave it to the garbage collector. Providers take their client from here instead:
one per configuration (key, base URL, timeouts, headers) per event loop, reused by
every run on that loop. Async HTTP clients belong to the loop they first ran on, hence
the loop in the key; a closed loop's clients go with it.
"""

from __future__ import annotations

import asyncio
import weakref
from typing import Any, Callable, Hashable, TypeVar

from mash_core.errors import ConfigError
from mash_core.llm.base import LLMError, LLMNotConfiguredError, LLMProvider
from mash_core.secrets import read_secret

T = TypeVar("T")

_clients: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[Hashable, Any]]" = weakref.WeakKeyDictionary()


def shared_client(key: Hashable, make: Callable[[], T]) -> T:
    """The client for `key` on the running loop, made with `make()` the first time."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:  # no loop: nothing to share with
        return make()
    clients = _clients.setdefault(loop, {})
    if key not in clients:
        clients[key] = make()
    return clients[key]


# -- what every provider shares besides its client ----------------------------------------


def read_key(names: tuple[str, ...], explicit: str | None, provider: str, app_id: str) -> str | None:
    """The first of the secrets `names` that is set (each NAME or the file NAME_FILE names),
    unless `explicit` (an api_key argument) is given. A misconfigured secret (both NAME and
    NAME_FILE, an unreadable file) is LLM_NOT_CONFIGURED, naming the variable, never the value."""
    if explicit:
        return explicit
    for name in names:
        try:
            value = read_secret(name)
        except ConfigError as exc:
            raise LLMNotConfiguredError(f"{exc} ({provider} provider for agent '{app_id}')") from None
        if value:
            return value
    return None


def missing_key_error(names: tuple[str, ...], provider: str, app_id: str) -> LLMNotConfiguredError:
    either = " or ".join(names)
    files = " or ".join(f"{n}_FILE" for n in names)
    return LLMNotConfiguredError(
        f"{either} is not set: export it, point {files} at a file holding it, or pass api_key=... "
        f"to use the {provider} provider for agent '{app_id}'"
    )


def status_error(vendor: str, status: int, detail: str, kind: str | None = None) -> LLMError:
    """The `LLMError` for an HTTP error answer, classified as AnthropicProvider does: rate
    limits, 408/409 and 5xx are transient (the agent retries them with backoff); 400, 401,
    403, 404 and other 4xx are permanent."""
    text = f"{vendor} API error {status}{f' ({kind})' if kind else ''}: {detail}"
    if status == 429:
        return LLMError(text, transient=True, status_code=status, code="LLM_RATE_LIMITED")
    if status >= 500 or status in (408, 409):
        return LLMError(text, transient=True, status_code=status, code="LLM_UNAVAILABLE")
    if status in (401, 403):
        return LLMError(text, transient=False, status_code=status, code="LLM_AUTH_FAILED")
    if status == 404:
        return LLMError(text, transient=False, status_code=status, code="LLM_NOT_FOUND")
    return LLMError(text, transient=False, status_code=status, code="LLM_BAD_REQUEST")


def one_line(error: LLMError, secret: str | None) -> LLMError:
    """`error` with its message on one line and `secret` (a key a proxy may echo back) masked."""
    line = " ".join(str(error).split())
    if secret and len(secret) >= 8:  # a toy key would mangle ordinary words
        line = line.replace(secret, "***")
    error.args = (line,)
    return error


class SDKProvider(LLMProvider):
    """What every provider built on a vendor SDK holds: its configuration (model from the
    argument, else `model_env`, else `default_model`; base URL from the argument, else
    `base_url_env`), a `repr` that never shows the key, and the client it makes lazily."""

    model_env = ""
    base_url_env = ""
    default_model = ""

    def __init__(self, app_id: str, model: str | None = None, api_key: str | None = None,
                 base_url: str | None = None, *, timeout: float = 120.0, max_retries: int = 0,
                 default_headers: dict[str, str] | None = None, http_client: Any = None) -> None:
        import os

        self.app_id = app_id
        self.model = model or (os.environ.get(self.model_env) if self.model_env else None) or self.default_model
        self._api_key = api_key
        self._base_url = base_url
        self._timeout = timeout
        # The Mash runtime retries transient LLMErrors itself, with backoff, inside a durable
        # step; SDK retries on top would multiply attempts and hide latency.
        self._max_retries = max_retries
        self._default_headers = default_headers
        # An `httpx2.AsyncClient` (proxies, wire inspection): this provider then owns its client
        # and aclose closes it. Without one, runs share a client per configuration (shared_client).
        self._http_client = http_client
        self._client: Any = None

    def __repr__(self) -> str:  # the key must never show up in logs or tracebacks
        return f"{type(self).__name__}(app_id={self.app_id!r}, model={self.model!r})"

    def base_url(self) -> str | None:
        """The base URL calls go to: the argument, else the environment variable (else the SDK's default)."""
        import os

        return self._base_url or (os.environ.get(self.base_url_env) if self.base_url_env else None) or None
