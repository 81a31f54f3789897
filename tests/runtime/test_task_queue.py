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
