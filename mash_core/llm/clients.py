"""SDK clients shared per process: one connection pool per provider configuration.

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
