"""django-q2's task queue after our fix: a reader killed while it waits leaves the queue
usable for the others (without the fix the second get below blocks forever)."""

import multiprocessing
import os
import signal
import time

from django_q.queues import Queue

from mash_runtime.run import task_queue


def _wait_for_a_task(queue):
    queue.get()


def test_a_reader_killed_while_waiting_leaves_the_queue_to_the_others():
    task_queue.install()
    context = multiprocessing.get_context("fork")
    queue = Queue()
    idle = context.Process(target=_wait_for_a_task, args=(queue,))
    idle.start()
    time.sleep(0.5)  # it is waiting in get() now
    os.kill(idle.pid, signal.SIGKILL)
    idle.join()
    results = context.Queue()
    reader = context.Process(target=lambda: results.put(queue.get()))
    reader.start()
    queue.put("task")
    try:
        assert results.get(timeout=10) == "task"
    finally:
        reader.join(5)
        if reader.is_alive():
            reader.kill()
    assert queue.qsize() == 0


def test_timed_and_non_blocking_gets_are_django_q2s_own():
    task_queue.install()
    queue = Queue()
    queue.put("a")
    time.sleep(0.1)  # the feeder thread writes it to the pipe
    assert queue.get(timeout=5) == "a"
    import queue as stdlib_queue

    import pytest

    with pytest.raises(stdlib_queue.Empty):
        queue.get(block=False)


class _Broker:
    def __init__(self):
        self.enqueued, self.acknowledged = [], []

    def enqueue(self, package):
        self.enqueued.append(package)

    def acknowledge(self, ack_id):
        self.acknowledged.append(ack_id)


def test_a_stopping_cluster_whose_worker_was_recycled_does_not_block_on_its_full_queue():
    # One worker, so django-q2's queue holds one item; the worker recycled (it left its loop)
    # and the stopping guard replaces no one: the sentinel's STOP pill blocked for good.
    import threading
    from multiprocessing import Value
    from types import SimpleNamespace

    from django_q.signing import SignedPackage

    task_queue.install()
    context = multiprocessing.get_context("fork")
    recycled = context.Process(target=lambda: None)
    recycled.start()
    recycled.join()
    recycled.timer = Value("f", -2)
    sentinel = SimpleNamespace(task_queue=Queue(maxsize=1), pool=[recycled], broker=_Broker())
    sentinel.task_queue.put({"id": "t1", "func": "f", "args": (), "kwargs": {}, "ack_id": 7, "cluster": "mash"})
    stopped = threading.Event()
    watcher = threading.Thread(target=task_queue._empty_while_nobody_reads, args=(sentinel, stopped), daemon=True)
    watcher.start()
    try:
        pill = threading.Thread(target=sentinel.task_queue.put, args=("STOP",), daemon=True)
        pill.start()
        pill.join(10)
        assert not pill.is_alive(), "the STOP pill is still waiting for room in the queue"
    finally:
        stopped.set()
        watcher.join(5)
    assert [SignedPackage.loads(p) for p in sentinel.broker.enqueued] == [{"id": "t1", "func": "f", "args": (),
                                                                           "kwargs": {}}]
    assert sentinel.broker.acknowledged == [7]
