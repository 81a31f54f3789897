"""The one module with SQL written out by hand.

The ORM is the default everywhere else. A statement is here only when the ORM cannot say it
(PostgreSQL's LISTEN/NOTIFY) or when writing it out was measured to pay (bench/README.md
names each gain); each function's docstring gives the ORM equivalent or says there is none.
"""

from __future__ import annotations

import json
from typing import Any

from django.db import connections

# NOTIFY payloads are limited to 8,000 bytes by PostgreSQL; leave room for the channel name.
NOTIFY_LIMIT = 7900


def is_postgresql(alias: str = "default") -> bool:
    return connections[alias].vendor == "postgresql"


def notify(channel: str, payload: str = "", alias: str = "default") -> None:
    """`pg_notify(channel, payload)` on this thread's Django connection: inside a transaction
    it is delivered when that commits (so a listener never hears of rows it cannot see yet),
    outside one at once. No ORM equivalent."""
    with connections[alias].cursor() as cursor:
        cursor.execute("SELECT pg_notify(%s, %s)", [channel, payload])


def connect_params(alias: str = "default") -> dict[str, Any]:
    """psycopg's connect arguments for `alias`, without Django's own cursor factory and
    adapters, for the few connections that live outside the ORM (listeners)."""
    params = dict(connections[alias].get_connection_params())
    for django_only in ("cursor_factory", "context", "prepare_threshold", "pool"):
        params.pop(django_only, None)
    return params


def listen_connection(*channels: str, alias: str = "default"):
    """A connection of its own (autocommit) that LISTENs on `channels`: psycopg's
    `notifies()` then yields what others NOTIFY. No ORM equivalent."""
    import psycopg
    from psycopg import sql

    conn = psycopg.connect(**connect_params(alias), autocommit=True)
    try:
        for channel in channels:
            conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
    except Exception:
        conn.close()
        raise
    return conn


async def async_listen_connection(*channels: str, params: dict[str, Any]):
    """`listen_connection` for an event loop (`params` from `connect_params`, read on a
    thread beforehand: Django's connection handler is not for the loop's thread)."""
    import psycopg
    from psycopg import sql

    conn = await psycopg.AsyncConnection.connect(**params, autocommit=True)
    try:
        for channel in channels:
            await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
    except Exception:
        await conn.close()
        raise
    return conn


def _payload(message: dict[str, Any]) -> str:
    return json.dumps(message, separators=(",", ":"))


def fits_notify(message: dict[str, Any]) -> bool:
    return len(_payload(message).encode()) <= NOTIFY_LIMIT


def sender_connection(alias: str = "default"):
    """A connection of its own (autocommit) for `notify_on`."""
    import psycopg

    return psycopg.connect(**connect_params(alias), autocommit=True)


def notify_on(conn, channel: str, message: dict[str, Any]) -> bool:
    """`pg_notify(channel, <message as JSON>)` on a psycopg connection of `sender_connection`;
    False (nothing sent) when the message is over NOTIFY_LIMIT. No ORM equivalent."""
    payload = _payload(message)
    if len(payload.encode()) > NOTIFY_LIMIT:
        return False
    conn.execute("SELECT pg_notify(%s, %s)", [channel, payload])
    return True
