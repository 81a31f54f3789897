"""django-q2's ORM broker on PostgreSQL, woken by NOTIFY instead of polling.

A module of its own, apart from the Redis broker (mash_runtime/run/broker.py), whose module
imports redis: processes on PostgreSQL alone never load it.
"""

from __future__ import annotations

import logging
import os
from time import sleep

from django.utils import timezone
from django_q.brokers.orm import ORM
from django_q.conf import Conf

from mash_runtime import db

logger = logging.getLogger("mash_runtime.pg_broker")

# The PostgreSQL channel new tasks are announced on.
TASKS_CHANNEL = "mash_tasks"


class NotifyingORM(ORM):
    """django-q2's ORM broker on PostgreSQL, woken by NOTIFY instead of polling.

    The stock broker polls its table every `poll` seconds (MASH_QUEUE_POLL, 0.05): on
    average half of that before a worker saw a new request, and an idle cluster kept
    querying. Here an enqueue also NOTIFYs (after the transaction that stored the task
    commits, as the task row itself), and the pusher, finding nothing, waits on a LISTEN
    connection of its own until a notification or `FALLBACK_SECONDS` pass: the fallback
    finds tasks whose lock expired (redeliveries) and anything rung while the listener
    reconnected.
    """

    FALLBACK_SECONDS = 1.0

    def __init__(self, list_key: str | None = None) -> None:
        super().__init__(list_key)
        self._listening = (None, None)  # (pid, connection): forked pushers open their own

    def enqueue(self, task):
        pk = super().enqueue(task)
        try:
            db.notify(TASKS_CHANNEL)
        except Exception:  # the task is stored: the pusher's fallback poll finds it
            logger.warning("could not notify the queue of a new task", exc_info=True)
        return pk

    def _listener(self):
        pid, conn = self._listening
        if conn is None or pid != os.getpid() or conn.closed:
            try:
                conn = db.listen_connection(TASKS_CHANNEL)
            except Exception as exc:
                logger.warning("queue: cannot LISTEN (%s); polling every %s s", exc, Conf.POLL)
                conn = None
            self._listening = (os.getpid(), conn)
        return conn

    def dequeue(self):
        conn = self._listener()
        if conn is not None:
            # What was rung before this query is answered by it.
            try:
                for _ in conn.notifies(timeout=0):
                    pass
            except Exception:
                self._drop_listener()
        now = timezone.now()
        task_list = []
        for task in self.get_connection().filter(key=self.list_key, lock__lt=now)[:Conf.BULK]:
            # Locked only if nobody else locked it since it was read (another cluster).
            if self.get_connection().filter(id=task.id, lock=task.lock).update(lock=self.timeout(task)):
                task_list.append((task.pk, task.payload))
        if task_list:
            return task_list
        if conn is None:
            sleep(Conf.POLL)
            return None
        try:
            for _ in conn.notifies(timeout=max(Conf.POLL, self.FALLBACK_SECONDS), stop_after=1):
                pass
        except Exception as exc:
            logger.warning("queue: the LISTEN connection failed (%s); reconnecting", exc)
            self._drop_listener()
            sleep(Conf.POLL)
        return None

    def _drop_listener(self) -> None:
        _, conn = self._listening
        self._listening = (None, None)
        if conn is not None:
            try:
                conn.close()
            except Exception:
                pass
