"""Handing pooled database connections back early.

Under ASGI a request's connection comes from the psycopg pool and goes back when the
request ends (CONN_MAX_AGE=0). A request that waits after its database work (a stream
joining its doorbell group and waiting for rings, a view whose response is still being
rendered and logged while hundreds of others share the CPU) would hold it all that time:
under a burst of requests the pool (MASH_DB_POOL_MAX, 20) ran dry and submits failed
with PoolTimeout after 10 s. These hand it back as soon as the work is done.
"""

from __future__ import annotations

from django.db import connection


def release_connection() -> None:
    """Give this thread's connection back (to the pool, or close it), unless a transaction
    is open on it (a test's, or a caller's). A SQLite connection is kept: it is the
    thread's own, holds nothing of the server's, and opening one again (with its PRAGMAs)
    cost a stream more than its read (a seventh of a web process's CPU under load)."""
    if connection.vendor != "sqlite" and not connection.in_atomic_block:
        connection.close()
