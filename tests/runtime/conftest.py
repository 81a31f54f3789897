"""Engine fixtures: run the durable engine in-process, draining a captured task queue.

django-q2's `async_task` is replaced by a recorder, and `engine.drain()` runs the
recorded tasks in order, each to its end (`run_now`), as a worker would. Runs do their ORM
work on the runner's database threads, so these tests need committed data
(`transactional_db`).
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from mash_runtime.host import set_host
from mash_runtime.tasks import RUN_REQUEST, SWEEP


def run_now(request_id) -> str:
    """Deliver a request to this process's runner and wait for its run to end (or for why
    it did not start): what a worker does, one request at a time."""
    from mash_runtime.run.runner import process_runner

    return process_runner().submit(request_id, wait=True)


class EngineHarness:
    def __init__(self) -> None:
        self.queue: list[tuple[str, tuple]] = []

    def record(self, func: str, *args: Any, **kwargs: Any) -> str:
        self.queue.append((func, args))
        return "captured"

    def drain(self, limit: int = 500) -> list[str]:
        from mash_runtime.sweeper import sweep
        from mash_runtime.tasks import ADVANCE_RUN
        from mash_runtime.workflows.engine import advance_run_task

        outcomes = []
        while self.queue and limit:
            limit -= 1
            func, args = self.queue.pop(0)
            if func == RUN_REQUEST:
                outcomes.append(run_now(*args))
            elif func == SWEEP:
                sweep()
            elif func == ADVANCE_RUN:
                advance_run_task(*args)
            elif func == "mash_runtime.memory.compaction.compact_session_task":
                from mash_runtime.memory.compaction import compact_session_task

                compact_session_task(*args)
            else:
                raise AssertionError(f"the harness does not know task {func}")
        assert not self.queue, "drain limit reached: tasks keep enqueueing each other"
        return outcomes

    def submit(self, plan: dict | str, agent_id: str = "primary", **kwargs: Any) -> str:
        from mash_runtime.services import submit_request

        message = plan if isinstance(plan, str) else json.dumps(plan)
        return submit_request(agent_id, message, **kwargs)["request_id"]

    def run(self, plan: dict | str, **kwargs: Any):
        rid = self.submit(plan, **kwargs)
        self.drain()
        return self.request(rid)

    def request(self, rid):
        from mash_runtime.models import Request

        return Request.objects.select_related("agent", "session").get(pk=rid)

    def events(self, rid) -> list:
        from mash_runtime.models import RuntimeEvent

        return list(RuntimeEvent.objects.filter(request_id=rid).order_by("seq"))

    def types(self, rid) -> list[str]:
        return [e.event_type for e in self.events(rid)]


@pytest.fixture
def engine(transactional_db, monkeypatch, settings):
    settings.MASH_HOST_APP = "tests.apps.engine_host:build_host"
    set_host(None)
    harness = EngineHarness()
    monkeypatch.setattr("django_q.tasks.async_task", harness.record)
    yield harness
    set_host(None)
