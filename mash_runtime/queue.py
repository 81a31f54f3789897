"""Handing work to the django-q2 cluster.

Duplicate deliveries are harmless (the lease decides who runs), so every path that
might have lost a task simply enqueues again.
"""

from __future__ import annotations

import logging

from django.db import transaction

logger = logging.getLogger("mash_runtime.queue")

RUN_REQUEST = "mash_runtime.engine.run_request_task"
SWEEP = "mash_runtime.sweeper.sweep"


def enqueue_request(request_id) -> None:
    from django_q.tasks import async_task

    try:
        async_task(RUN_REQUEST, str(request_id), task_name=f"request-{request_id}", q_options={"ack_failure": True})
    except Exception:
        # The sweeper re-enqueues accepted requests nobody claimed, so a broker hiccup only delays.
        logger.exception("could not enqueue request %s; the sweeper will retry", request_id)


def enqueue_request_on_commit(request_id) -> None:
    # With the Redis broker an enqueue inside the transaction could run before the row
    # is visible; after commit it is safe for every broker.
    transaction.on_commit(lambda: enqueue_request(request_id))


def enqueue_sweep() -> None:
    from django_q.tasks import async_task

    try:
        async_task(SWEEP, task_name="mash-sweep")
    except Exception:
        logger.exception("could not enqueue a sweep")
