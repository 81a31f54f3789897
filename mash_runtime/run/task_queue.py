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

A second fix, for a cluster stopping: the queue holds at most `queue_limit` items
(workers², so one with one worker), and only workers read it. A worker that left its loop
(recycled: ours drain their runs for seconds before they exit; timed out; dead) is
replaced by the sentinel's guard, but the guard has ended once the cluster stops: if no
worker of the pool reads any more, the pusher blocks forever putting a task into the full
queue, or the sentinel putting its STOP pills, and the cluster never exits (SIGKILLed by
whoever waits for it). Seen here after every `MASH_WORKER_RECYCLE` test: 15 s of teardown
and a kill. `install()` also wraps `Sentinel.stop`: while it runs, whenever no worker of
the pool reads the queue, what is in it is taken out and the tasks are given back to the
broker (to run on another cluster, or this one when it starts again).
"""

from __future__ import annotations

import logging
import queue as stdlib_queue
import threading
from multiprocessing.connection import wait as wait_for_ready
from multiprocessing.reduction import ForkingPickler

logger = logging.getLogger("mash_runtime.run")

WAIT_SECONDS = 1.0
STOP_CHECK_SECONDS = 0.1  # how often a stopping sentinel looks whether any worker still reads

# django-q2's worker timer (`Value("f")`): -1 idle, > 0 busy, 0 timed out (the loop ended),
# -2 recycled (the loop ended).
_LEFT_ITS_LOOP = (0, -2)

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


def _reads_the_queue(process) -> bool:
    """Whether a worker of the pool may still take tasks: alive and in its loop. (One that
    took its STOP pill counts as reading: every item before that pill was taken.)"""
    if process.timer.value in _LEFT_ITS_LOOP:
        return False
    return not wait_for_ready([process.sentinel], 0)  # readable once the process has ended


def _hand_back(sentinel, task) -> None:
    from django_q.signing import SignedPackage

    task = dict(task)
    ack_id = task.pop("ack_id", None)
    task.pop("cluster", None)  # both set by the pusher
    sentinel.broker.enqueue(SignedPackage.dumps(task))
    if ack_id is not None:
        sentinel.broker.acknowledge(ack_id)


def _empty_while_nobody_reads(sentinel, stopped: threading.Event) -> None:
    """Runs beside `Sentinel.stop`: whenever no worker of the pool reads the task queue, take
    what is in it (the pusher's tasks go back to the broker, STOP pills are dropped: no one
    is left to take them), so neither the pusher's put nor the sentinel's blocks for good."""
    from django.db import connections

    queue, handed, lost = sentinel.task_queue, 0, 0
    try:
        while not stopped.wait(STOP_CHECK_SECONDS):
            while not stopped.is_set() and not any(_reads_the_queue(p) for p in list(sentinel.pool)):
                try:
                    if queue.empty():
                        break
                    item = queue.get(block=False)
                except stdlib_queue.Empty:
                    break
                except (ValueError, OSError):  # closed: every pill is in, nothing waits on a put
                    return
                if item == "STOP":
                    continue
                try:
                    _hand_back(sentinel, item)
                    handed += 1
                except Exception:
                    # Left to the broker's own retry (ORM) or the sweeper (a request not claimed).
                    lost += 1
                    logger.warning("a stopping cluster could not give task %s back to the broker",
                                   item.get("id") if isinstance(item, dict) else item, exc_info=True)
    finally:
        if handed or lost:
            logger.info("cluster stopping with no worker reading its task queue: %d task(s) given back to the broker"
                        "%s", handed, f", {lost} not" if lost else "")
        connections.close_all()


def install() -> None:
    """Patch django-q2's queue class (in every process: the cluster forks its workers) and
    its sentinel's stop."""
    global _installed
    if _installed:
        return
    from django_q.cluster import Sentinel
    from django_q.queues import Queue

    original = Queue.get

    def get(self, block=True, timeout=None):
        if not (block and timeout is None):
            return original(self, block, timeout)
        value = _get_without_holding_the_lock_while_waiting(self)
        self.size.increment(-1)
        return value

    Queue.get = get

    original_stop = Sentinel.stop

    def stop(self):
        stopped = threading.Event()
        watcher = threading.Thread(target=_empty_while_nobody_reads, args=(self, stopped),
                                   name="mash-stopping-queue", daemon=True)
        watcher.start()
        try:
            original_stop(self)
        finally:
            stopped.set()
            watcher.join(5)

    Sentinel.stop = stop
    _installed = True
