"""A fix for django-q2's task queue: a worker killed while it waits for a task must not
take every other worker of its cluster down with it.

django-q2 hands tasks to its worker processes through one `multiprocessing.Queue`, and a
blocking `get()` holds the queue's read lock (a semaphore shared by the processes) for as
long as it waits. A worker SIGKILLed while idle (the OOM killer picks the biggest
process: ours hold many runs, and are idle between deliveries most of the time) dies
holding that lock, and every other worker, its replacement included, then blocks on it
for good: nothing runs until the whole cluster is restarted, and the cluster cannot even
stop (its sentinel waits for the stuck workers). Seen here: after one `kill -9` of an idle
worker, no request ran again.

`install()` makes the blocking `get()` wait for data without the lock and take the lock
only to read, so a process can die holding it only during a read of a few microseconds.
"""

from __future__ import annotations

from multiprocessing.reduction import ForkingPickler

WAIT_SECONDS = 1.0

_installed = False


def _get_without_holding_the_lock_while_waiting(queue, block: bool = True, timeout=None):
    if queue._closed:
        raise ValueError(f"Queue {queue!r} is closed")
    while True:
        queue._poll(WAIT_SECONDS)  # wait for bytes, holding nothing
        if not queue._rlock.acquire(timeout=WAIT_SECONDS):
            continue
        try:
            if not queue._poll():  # another reader took them first
                continue
            data = queue._recv_bytes()
            queue._sem.release()
        finally:
            queue._rlock.release()
        return ForkingPickler.loads(data)


def install() -> None:
    """Patch django-q2's queue class (in every process: the cluster forks its workers)."""
    global _installed
    if _installed:
        return
    from django_q.queues import Queue

    original = Queue.get

    def get(self, block=True, timeout=None):
        if not (block and timeout is None):
            return original(self, block, timeout)
        value = _get_without_holding_the_lock_while_waiting(self)
        self.size.increment(-1)
        return value

    Queue.get = get
    _installed = True
