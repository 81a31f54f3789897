"""The database threads: where the runs of a process do their (synchronous) ORM work.

Many runs share one event loop; each of their database calls goes to one of a few
threads, each with its own connection (Django's connections are per thread), and never
to a thread per run: the number of connections a process opens is this pool's size
whatever the number of runs in flight. A call runs whole on one thread, so its
transactions begin and end there.

`sync_to_async` with this executor also tells the thread which loop called it, so
`async_to_sync` inside (a doorbell rung from an on_commit hook) runs on that loop, with
its channel-layer connection, instead of a new loop per call.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Awaitable, Callable

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import DatabaseError, close_old_connections, connections

from mash_runtime import dbfaults
from mash_runtime.conf import conf

# How often a thread drops connections that went stale or outlived CONN_MAX_AGE. Checking
# before every call would cost a health-check query per call (Django resets the check).
REFRESH_SECONDS = 10.0

_local = threading.local()


def default_size() -> int:
    # SQLite takes one writer at a time: more threads only queue on its lock (conf says so).
    return conf.worker_db_threads


def _pooled() -> bool:
    return bool((settings.DATABASES["default"].get("OPTIONS") or {}).get("pool"))


def give_back_connection() -> None:
    """Return this thread's pooled connection to the pool (CONN_MAX_AGE=0: it is lent per
    call), unless a transaction is open on it. Other connections (SQLite, PostgreSQL
    without the pool) stay with the thread: these threads are few and long-lived."""
    conn = connections["default"]
    if conn.connection is not None and _pooled() and not conn.in_atomic_block:
        conn.close()


def _job(fn: Callable, *args: Any, **kwargs: Any) -> Any:
    now = time.monotonic()
    # Also as soon as another thread found its connection dropped (the server ended them all,
    # most likely): with CONN_HEALTH_CHECKS the next query checks this one first, so each
    # thread does not fail a call of its own to find out.
    if now - getattr(_local, "checked", 0.0) > REFRESH_SECONDS or getattr(_local, "drops", 0) != dbfaults.drops_seen():
        _local.checked, _local.drops = now, dbfaults.drops_seen()
        close_old_connections()
    try:
        return fn(*args, **kwargs)
    except DatabaseError as exc:
        # Marked for the awaiting run (run.execute hands its request back instead of failing it).
        dbfaults.note_if_dropped(exc)
        _local.drops = dbfaults.drops_seen()
        # A broken connection is closed here, so the thread's next call reconnects.
        for conn in connections.all(initialized_only=True):
            conn.close_if_unusable_or_obsolete()
        raise
    finally:
        give_back_connection()  # or this thread would keep it from everyone else


# The database threads of the run the current task belongs to (set by the runner for
# each run's task): code called from inside a run (tools) reaches them through `database`.
current: contextvars.ContextVar["DbThreads | None"] = contextvars.ContextVar("mash_db_threads", default=None)


def database(fn: Callable) -> Callable[..., Awaitable[Any]]:
    """`fn` as a coroutine function on the current run's database threads; outside a run
    (a web process, a test), on asgiref's thread-sensitive thread as usual."""
    threads = current.get()
    return threads(fn) if threads is not None else sync_to_async(functools.partial(_job, fn))


class ReleasingExecutor(ThreadPoolExecutor):
    """A thread pool whose every call ends with its pooled connection given back (and
    starts by dropping stale ones): the threads can be shared by any number of callers
    without one of them keeping a connection from the rest."""

    def submit(self, fn, /, *args, **kwargs):
        return super().submit(_job, fn, *args, **kwargs)


class DbThreads:
    def __init__(self, size: int | None = None, *, name: str = "mash-db") -> None:
        self.size = size or default_size()
        self.executor = ReleasingExecutor(self.size, thread_name_prefix=name)

    def __call__(self, fn: Callable) -> Callable[..., Awaitable[Any]]:
        """`fn` as a coroutine function that runs on one of these threads."""
        return sync_to_async(fn, thread_sensitive=False, executor=self.executor)

    def start(self, fn: Callable, *args: Any) -> "asyncio.Future":
        """Run `fn(*args)` on one of these threads from now on (not from the first await, as
        a `__call__` coroutine does); the future it returns is the running loop's."""
        return asyncio.wrap_future(self.executor.submit(fn, *args))

    def close_connections(self, timeout: float = 10.0) -> None:
        """Close every thread's connections (before a test database is dropped, or at exit).
        Blocks; call it from outside these threads."""
        barrier = threading.Barrier(self.size, timeout=timeout)

        def close() -> None:
            connections.close_all()
            try:
                barrier.wait()  # holds each thread until all have taken one of these calls
            except threading.BrokenBarrierError:
                pass

        for future in [self.executor.submit(close) for _ in range(self.size)]:
            future.result(timeout + 1)

    def shutdown(self) -> None:
        self.close_connections()
        self.executor.shutdown(wait=True)
