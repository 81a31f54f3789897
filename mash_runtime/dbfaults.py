"""Dropped database connections: telling one from other database errors, and getting live
connections again.

PostgreSQL may end a connection at any moment (a restart, a failover, `pg_terminate_backend`,
a proxy's idle timeout). The thread's connection is dead then, and so is every idle
connection in a web process's pool: each fails its next query, one request after another,
unless someone notices. `recover_connections` notices for all of them at once.
"""

from __future__ import annotations

import logging
from typing import Callable, TypeVar

from django.db import DEFAULT_DB_ALIAS, InterfaceError, OperationalError, connections

logger = logging.getLogger("mash_runtime.db")

T = TypeVar("T")


def _pool_timeout(exc: BaseException) -> bool:
    cause = exc.__cause__
    return cause is not None and type(cause).__name__ == "PoolTimeout"


# SQLSTATEs of a connection the server ended: class 08 (connection exception), and
# admin_shutdown (pg_terminate_backend, a fast shutdown), crash_shutdown, cannot_connect_now.
_ENDED = ("57P01", "57P02", "57P03")


def connection_dropped(exc: BaseException, alias: str = DEFAULT_DB_ALIAS) -> bool:
    """Whether `exc`, a database error this thread just got, means the server ended (or never
    gave) the connection it ran on: on PostgreSQL, an error whose SQLSTATE says so, or one
    psycopg raised itself (no SQLSTATE: the socket broke, or no connection could be made).
    Not a pool timeout (no connection was free: trying again at once would only wait as long
    again); not a bad statement, a deadlock or a locked SQLite database, whose connection
    is fine.

    The error decides, not the connection's state afterwards: leaving a transaction whose
    rollback failed, Django has already opened a new connection."""
    if not isinstance(exc, (OperationalError, InterfaceError)) or _pool_timeout(exc):
        return False
    conn = connections[alias]
    if conn.vendor != "postgresql":
        return False
    cause = exc.__cause__
    sqlstate = getattr(cause, "sqlstate", None)
    if sqlstate:
        return sqlstate.startswith("08") or sqlstate in _ENDED
    if cause is not None:
        return True
    raw = conn.connection  # raised by Django itself: only if it was about this closed connection
    return raw is not None and bool(getattr(raw, "closed", False))


# Bumped whenever a thread of this process finds its connection dropped: the others' are
# likely dead too, and they check theirs before their next call (run.dbthreads).
_drops = 0


def drops_seen() -> int:
    return _drops


def note_if_dropped(exc: BaseException, alias: str = DEFAULT_DB_ALIAS) -> bool:
    """In the thread that got `exc`: whether it is a dropped connection; if so, marks the
    exception (`was_dropped`, readable from any thread, e.g. the event loop awaiting the
    call) and counts the drop for this process's other threads."""
    global _drops
    if getattr(exc, "mash_connection_dropped", False):
        return True
    if not connection_dropped(exc, alias):
        return False
    exc.mash_connection_dropped = True
    _drops += 1
    return True


def was_dropped(exc: BaseException) -> bool:
    """Whether `exc` was marked a dropped connection by `note_if_dropped`."""
    return bool(getattr(exc, "mash_connection_dropped", False))


def recover_connections(alias: str = DEFAULT_DB_ALIAS) -> None:
    """After a dropped connection: let this thread's go (the pool discards a dead one) and test
    the pool's idle connections (an empty query each), so that the dead ones are replaced now
    rather than handed to the next requests one by one. Outside a transaction only."""
    conn = connections[alias]
    if conn.in_atomic_block:
        return
    try:
        conn.close()
    except Exception:  # closing a dead connection may complain; it is gone either way
        conn.connection = None
    pool = getattr(conn, "pool", None) if conn.vendor == "postgresql" else None
    if pool is not None and not pool.closed:
        try:
            pool.check()
        except Exception:
            logger.warning("checking the connection pool failed", exc_info=True)


def once_more_if_dropped(fn: Callable[[], T], what: str = "database work") -> T:
    """`fn()`, run a second time (on a live connection) when the first ended on a dropped
    connection; any other error, or a second failure, propagates.

    Only for work that is safe to repeat when its first try's outcome is unknown (read-only,
    or writes that recognise their own first try: see `services.submit_request`), and never
    inside a transaction: the caller's transaction died with the connection.
    """
    try:
        return fn()
    except (OperationalError, InterfaceError) as exc:
        if connections[DEFAULT_DB_ALIAS].in_atomic_block or not note_if_dropped(exc):
            raise
        logger.warning("%s: the database connection dropped (%s); trying once more", what, " ".join(str(exc).split()))
        recover_connections()
    return fn()
