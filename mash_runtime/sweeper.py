"""The sweeper: recovers what a crash, a lost task or a timeout left behind.

Runs as a django-q2 schedule (the scheduler looks every 30 s) and once whenever a
worker process spawns, which is exactly when a killed worker is replaced: leases
held by dead processes on this host are recovered at once instead of after expiry.
"""

from __future__ import annotations

import logging
import os
import socket
from datetime import timedelta

from django.db import close_old_connections
from django.db.models import Exists, OuterRef
from django.utils import timezone

from mash_runtime.models import IdempotencyKey, Request, Worker
from mash_runtime.queue import enqueue, enqueue_request
from mash_runtime.run import lifecycle
from mash_runtime.services import expire_interactions
from mash_runtime.tasks import ADVANCE_RUN, SWEEP
from mash_runtime.workflows.engine import stalled_runs

logger = logging.getLogger("mash_runtime.sweeper")

MAX_RECOVERY_ATTEMPTS = 5
# Accepted requests nobody claimed for this long had their task lost (the Redis broker
# drops a task whose worker died); enqueueing again is harmless if it was only slow.
STALE_ACCEPTED_SECONDS = 15


def _owner_is_dead(owner: str) -> bool:
    host, _, rest = owner.partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return _is_zombie(int(pid))


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as handle:
            return any(line.startswith("State:") and "Z" in line.split()[1] for line in handle)
    except OSError:
        return False


def recover_orphans(now) -> int:
    recovered = 0
    running = Request.objects.select_related("agent", "session").filter(status=Request.Status.RUNNING)
    # Released by a crash between claim and lease (or by an operator): no owner, still running.
    ownerless = list(running.filter(lease_owner="").values_list("pk", flat=True))
    for req in running.exclude(lease_owner=""):
        owner = req.lease_owner
        expired = req.lease_expires_at is None or req.lease_expires_at < now
        if not expired and not _owner_is_dead(req.lease_owner):
            continue
        if not lifecycle.take_back(req):
            continue
        req.refresh_from_db()
        if req.recovery_attempts > MAX_RECOVERY_ATTEMPTS:
            lifecycle.finish(req, Request.Status.FAILED, error=f"Worker lost {req.recovery_attempts} times; giving up",
                           error_code="RECOVERY_EXHAUSTED", retryable=True)
            continue
        logger.warning("recovering request %s from lost worker %s", req.pk, owner)
        enqueue_request(req.pk)
        recovered += 1
    for pk in ownerless:
        enqueue_request(pk)
        recovered += 1
    return recovered


def requeue_stale(now) -> int:
    blocked = Request.objects.filter(session_id=OuterRef("session_id"), session_seq__lt=OuterRef("session_seq")).exclude(
        status__in=Request.TERMINAL
    )
    ready = Request.objects.filter(
        status__in=(Request.Status.ACCEPTED, Request.Status.WAITING),
        created_at__lt=now - timedelta(seconds=STALE_ACCEPTED_SECONDS),
    ).exclude(Exists(blocked))
    count = 0
    for pk in ready.values_list("pk", flat=True):
        enqueue_request(pk)
        count += 1
    for pk in lifecycle.parked_requests_ready():
        enqueue_request(pk)
        count += 1
    return count


# Heartbeat rows of processes gone this long are deleted (a crashed process leaves its row).
FORGET_WORKER_SECONDS = 3600


def forget_workers(now) -> int:
    """Delete heartbeat rows of processes long gone, and at once those of dead processes on
    this host (a SIGKILLed worker's row would otherwise count as live for a while)."""
    dead = [name for name in Worker.live(now).values_list("name", flat=True) if _owner_is_dead(name)]
    stale = Worker.objects.filter(last_seen_at__lt=now - timedelta(seconds=FORGET_WORKER_SECONDS))
    return stale.delete()[0] + Worker.objects.filter(name__in=dead).delete()[0]


def forget_idempotency_keys(now) -> int:
    """Delete Idempotency-Keys older than `IdempotencyKey.KEEP` (a day): the same key then
    makes a new request. One indexed DELETE (the rows have no dependents)."""
    return IdempotencyKey.expired(now).delete()[0]


SWEEP_SCHEDULE = "mash-sweep"


def ensure_schedule() -> None:
    """The periodic sweep must exist: recreate it if a flush or an operator removed it.

    The schedule's name is not unique in django-q2, so two processes sweeping at once (two
    workers spawning together) could both create it; a second row then made `get()` fail
    in every later sweep, and nothing was recovered again. Extras are deleted instead.
    """
    from django_q.models import Schedule

    found = list(Schedule.objects.filter(name=SWEEP_SCHEDULE).order_by("pk").values_list("pk", flat=True))
    if not found:
        Schedule.objects.create(name=SWEEP_SCHEDULE, func=SWEEP, schedule_type=Schedule.MINUTES,
                                minutes=1, repeats=-1)
    elif len(found) > 1:
        Schedule.objects.filter(pk__in=found[1:]).delete()


def sweep() -> dict[str, int]:
    close_old_connections()
    ensure_schedule()
    now = timezone.now()
    stalled = stalled_runs()
    if stalled:
        for run_id in stalled:
            enqueue(ADVANCE_RUN, run_id, task_name=f"advance-{run_id}")
    result = {
        "runs_advanced": len(stalled),
        "recovered": recover_orphans(now),
        "requeued": requeue_stale(now),
        "interactions_timed_out": expire_interactions(now),
        "workers_forgotten": forget_workers(now),
        "idempotency_keys_forgotten": forget_idempotency_keys(now),
    }
    if any(result.values()):
        logger.info("sweep: %s", result)
    return result
