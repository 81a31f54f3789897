"""Handing work to the django-q2 cluster.

Duplicate deliveries are harmless (the lease decides who runs), so every path that
might have lost a task simply enqueues again.
"""

from __future__ import annotations

import logging
import os

from django.db import transaction

from mash_runtime.tasks import ADVANCE_RUN, RUN_REQUEST, SWEEP

logger = logging.getLogger("mash_runtime.queue")

_broker = (None, None)  # (pid, broker)


def broker():
    """This process's django-q2 broker, made once.

    `async_task` makes a new broker per call unless given one, which for Redis means a new
    client, a TCP connect and a handshake on every submit (a tenth of a POST's CPU).
    Keyed by pid so a forked process never shares its parent's connection.
    """
    global _broker
    pid, made = _broker
    if made is None or pid != os.getpid():
        from django_q.brokers import get_broker

        made = get_broker()
        _broker = (os.getpid(), made)
    return made

def enqueue(func: str, *args, task_name: str, **q_options) -> None:
    """Hand `func(*args)` to the cluster through this process's broker (raises if the broker does)."""
    from django_q.tasks import async_task

    async_task(func, *args, task_name=task_name, q_options={**q_options, "broker": broker()})


def enqueue_request(request_id) -> None:
    try:
        enqueue(RUN_REQUEST, str(request_id), task_name=f"request-{request_id}", ack_failure=True)
    except Exception:
        # The sweeper re-enqueues accepted requests nobody claimed, so a broker hiccup only delays.
        logger.exception("could not enqueue request %s; the sweeper will retry", request_id)


def enqueue_request_on_commit(request_id) -> None:
    # With the Redis broker an enqueue inside the transaction could run before the row
    # is visible; after commit it is safe for every broker.
    transaction.on_commit(lambda: enqueue_request(request_id))


def enqueue_advance(run_id: str) -> None:
    """After a workflow task's request ended (committed): move its run on (`advance_run`)."""
    try:
        enqueue(ADVANCE_RUN, run_id, task_name=f"advance-{run_id}")
    except Exception:
        logger.exception("could not enqueue advance of run %s; the sweeper will", run_id)


def enqueue_sweep() -> None:
    try:
        enqueue(SWEEP, task_name="mash-sweep")
    except Exception:
        logger.exception("could not enqueue a sweep")
