"""What a run is and how it can end: plain values passed between the lifecycle, the
run and the process runner (no behaviour, no database)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mash_core.agent import Agent
    from mash_runtime.models import Request


class Outcome(StrEnum):
    """What became of a delivery (a django-q2 task) or of a run. The values are what the
    task returns, so they show as its result wherever django-q2 stores one."""

    # The delivery did not start a run:
    MISSING = "missing"  # no such request
    FINISHED = "finished"  # it had ended already
    LEASED = "leased"  # another run holds its lease
    WAITING = "waiting"  # an earlier request of its session has not ended
    REQUEUED = "requeued"  # this process could not take it (no slot in time, or draining): delivered again
    STARTED = "started"  # a slot holds it; the claim and the run go on in this process
    # A run ended, for now or for good:
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    PARKED_INPUT = "parked:input"  # waits for a person's answer
    PARKED_SUBAGENT = "parked:subagent"  # waits for a child request
    LEASE_LOST = "lease_lost"  # someone else took the request over
    RELEASED = "released"  # handed back by a draining process; another one continues it


class Stop(StrEnum):
    """Why the runner interrupts a run from outside."""

    CANCEL = "cancel"  # a client asked
    LEASE_LOST = "lease_lost"  # the heartbeat found the lease gone
    DRAIN = "drain"  # the process is stopping and the grace period is over


@dataclass
class Prepared:
    """What a run needs from the database and the spec before its first step."""

    agent: "Agent"
    history: list
    checkpoints: dict[str, dict[str, Any]]


@dataclass
class RunState:
    """One claimed request while this process runs it."""

    request: "Request"
    owner: str  # the lease owner: this process
    # Claimed for the first time: no step ran before, so there are no checkpoints to load.
    first_start: bool = False
    # Committed by the claim, not rung yet: they ride on the run's first ring.
    claim_events: list = field(default_factory=list)
    # Rows the claim read along (its history and published skills), for prepare_run.
    reads: tuple | None = None
    prepared: Prepared | None = None
    stop: Stop | None = None
    # The agent loop's task (what cancel interrupts), once it runs.
    task: asyncio.Task | None = None
    # Set just before the run writes its outcome: from then on nothing interrupts it.
    finishing: bool = False

    @property
    def key(self) -> str:
        return str(self.request.pk)
