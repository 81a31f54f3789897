"""The process runner: one event loop per worker process running many requests at once.

A django-q2 task (`run_request_task`) is a delivery: it waits for a free slot, claims
the request and hands its run to this process's loop, then returns, so the worker takes
the next task while the run goes on. When every slot is taken the task waits (at most
`slot_wait_seconds`, then the request is delivered again for another process), which
leaves the broker's other tasks to the other processes. A run that parks (an approval,
AskUser, a subagent) ends here and frees its slot; the answer delivers it again.

One heartbeat per process renews the leases of all its runs in one statement and reads
their cancel flags in the same trip; a cancel interrupts the run's model or tool call.
ORM work goes to a few database threads (`DbThreads`), never a thread per run.

Stopping: SIGTERM, django-q2's STOP and recycling all end in `drain`: no new runs, runs
stop at their next step boundary, and whatever still runs after the grace period is
interrupted and handed back (lease cleared, delivered again), so another process
continues it at once. A SIGKILL leaves the leases to expire and the sweeper recovers them.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_for_first
from typing import Any

from django.utils import timezone

from mash_runtime import dbfaults
from mash_runtime.conf import conf
from mash_runtime.models import Worker
from mash_runtime.queue import enqueue_request
from mash_runtime.run import lifecycle
from mash_runtime.run import dbthreads
from mash_runtime.run.dbthreads import DbThreads
from mash_runtime.run.execute import execute
from mash_runtime.run.state import Outcome, RunState, Stop

logger = logging.getLogger("mash_runtime.run")

HEARTBEAT_SECONDS = 0.5  # how soon a cancel is noticed
REPORT_SECONDS = 5.0  # an idle process's heartbeat row
REPORT_CHANGED_SECONDS = 1.0  # at most this often while its slots in use change
STOP_WAIT_SECONDS = 10.0  # for interrupted runs to hand themselves back
TOOL_THREADS = 32


def concurrency() -> int:
    return max(1, int(conf.WORKER_CONCURRENCY))


def drain_seconds() -> float:
    return float(conf.WORKER_DRAIN_SECONDS)


def slot_wait_seconds() -> float:
    # Well below django-q2's task timeout: a task that hits it takes its process (and every
    # run in it) down.
    return min(30.0, float(conf.TASK_TIMEOUT) / 4)


class Runner:
    def __init__(self, *, slots: int | None = None, report: bool = False, db_threads: int | None = None) -> None:
        self.slots = slots or concurrency()
        self.report = report  # write this process's heartbeat row (worker processes do)
        self.owner = lifecycle.new_lease_owner()
        self.started_at = timezone.now()
        self.db = DbThreads(db_threads)
        self.runs: dict[str, RunState] = {}
        self.tasks: dict[str, asyncio.Task] = {}
        self.claiming: set[str] = set()  # holding a slot, their claim under way
        self.draining = False
        self._free = asyncio.Semaphore(self.slots)
        self._drained: asyncio.Task | None = None
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, args=(ready,), name="mash-runner", daemon=True)
        self._thread.start()
        ready.wait()

    def _serve(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        # Synchronous tools run on the loop's default executor (asyncio.to_thread): sized for
        # many runs at once rather than asyncio's few-per-core default.
        self.loop.set_default_executor(ThreadPoolExecutor(min(TOOL_THREADS, self.slots), thread_name_prefix="mash-tool"))
        self._beating = self.loop.create_task(self._heartbeat())
        self.loop.call_soon(ready.set)
        self.loop.run_forever()

    @property
    def in_use(self) -> int:
        return len(self.runs) + len(self.claiming)

    # -- deliveries (called from other threads) ------------------------------------------

    def submit(self, request_id, *, wait: bool = False) -> Outcome:
        """Deliver a request: returns as soon as a slot holds it (`STARTED`: the claim and
        the run go on in this process) or why not; with `wait`, once the run ended (its
        outcome). Blocks the calling thread."""
        held: Future = Future()
        done = asyncio.run_coroutine_threadsafe(self.admit(str(request_id), held), self.loop)
        if wait:
            return done.result()
        # `admit` answers `held` early; if it fails before it could, its error comes from `done`
        # (waiting on `held` alone would block this task until django-q2's timeout killed the
        # process, and every run in it).
        wait_for_first([held, done], return_when=FIRST_COMPLETED)
        return held.result() if held.done() else done.result()

    async def admit(self, key: str, held: Future | None = None) -> Outcome:
        """Take a slot for `key`, then claim it and start its run. `held` learns the first:
        the delivering task need not wait for the claim's trip to the database, so one
        worker process takes deliveries as fast as they come."""

        def answer(outcome: Outcome) -> Outcome:
            if held is not None and not held.done():
                held.set_result(outcome)
            return outcome

        if key in self.runs or key in self.claiming:  # a duplicate delivery of a run this process holds
            return answer(Outcome.LEASED)
        if self.draining:
            return answer(await self._deliver_again(key))
        if self._free.locked():  # no slot free: wait for one (wait_for costs a task and a turn of the loop)
            try:
                await asyncio.wait_for(self._free.acquire(), slot_wait_seconds())
            except TimeoutError:
                return answer(await self._deliver_again(key))
        else:
            await self._free.acquire()  # returns at once
        if self.draining or key in self.runs or key in self.claiming:
            self._free.release()
            return answer(await self._deliver_again(key) if self.draining else Outcome.LEASED)
        self.claiming.add(key)
        # The claim goes to a database thread before the delivering thread wakes: that thread's
        # own work (django-q2's result, its next get) then overlaps the claim's trip to the
        # database instead of running ahead of it.
        claiming = self.db.start(lifecycle.claim, key, self.owner)
        answer(Outcome.STARTED)
        try:
            claimed = await claiming
        except Exception as exc:
            self._free.release()
            if dbfaults.was_dropped(exc):
                return await self._claim_dropped(key, exc)
            # The request stays accepted: the sweeper delivers it again.
            logger.exception("claiming %s failed", key)
            return Outcome.FAILED
        except BaseException:
            self._free.release()
            raise
        finally:
            self.claiming.discard(key)
        if not isinstance(claimed, RunState):
            self._free.release()
            return claimed
        self.runs[key] = claimed
        task = self.tasks[key] = self.loop.create_task(self._run(claimed))
        return await task

    async def _claim_dropped(self, key: str, exc: BaseException) -> Outcome:
        """The claim's connection dropped: whether it took the lease is unknown. Hand back what
        it may hold and deliver the request again at once (not after the sweeper's wait for
        unclaimed requests, or for an orphaned lease to expire)."""
        logger.warning("claiming %s: the database connection dropped (%s); delivering it again", key,
                       " ".join(str(exc).split()))
        try:
            if not await self.db(lifecycle.release)(self.owner, [key]):
                await self.db(enqueue_request)(key)
        except Exception:
            logger.warning("handing %s back failed; the sweeper delivers it again", key, exc_info=True)
            return Outcome.FAILED
        return Outcome.REQUEUED

    async def _deliver_again(self, key: str) -> Outcome:
        await self.db(enqueue_request)(key)  # the ORM broker writes a row
        return Outcome.REQUEUED

    async def _run(self, state: RunState) -> Outcome:
        dbthreads.current.set(self.db)  # this task's context: tools of the run reach the same threads
        try:
            return await execute(state, self.db, draining=lambda: self.draining)
        except Exception:
            logger.exception("run of %s ended with an error", state.key)
            return Outcome.FAILED
        finally:
            self.runs.pop(state.key, None)
            self.tasks.pop(state.key, None)
            self._free.release()

    def _interrupt(self, state: RunState, stop: Stop) -> None:
        if state.finishing or state.stop is not None:
            return
        state.stop = stop
        if state.task is not None and not state.task.done():
            state.task.cancel()
        # Not started yet: execute checks `state.stop` before it starts the agent loop.

    # -- heartbeat -------------------------------------------------------------------------

    async def _heartbeat(self) -> None:
        last_renew = time.monotonic()
        last_report, reported = float("-inf"), None
        first = True
        while True:
            if not first:  # the first beat at once: a new worker shows before it runs anything
                await asyncio.sleep(HEARTBEAT_SECONDS)
            first = False
            now = time.monotonic()
            held = [key for key, state in self.runs.items() if not state.finishing]
            renew = bool(held) and now - last_renew >= max(1.0, lifecycle.lease_seconds() / 3)
            report = None
            if self.report and (now - last_report >= REPORT_SECONDS
                                or (self.in_use != reported and now - last_report >= REPORT_CHANGED_SECONDS)):
                report = self._report_values()
            if not held and report is None:
                continue
            try:
                alive = await self.db(self._beat)(held, renew, report)
            except Exception:
                logger.warning("worker heartbeat failed", exc_info=True)
                continue
            if renew:
                last_renew = now
            if report is not None:
                last_report, reported = now, report["in_use"]
            for key in held:
                state = self.runs.get(key)
                if state is None:
                    continue
                if key not in alive:
                    self._interrupt(state, Stop.LEASE_LOST)
                elif alive[key]:
                    self._interrupt(state, Stop.CANCEL)

    def _report_values(self) -> dict[str, Any]:
        return {"hostname": socket.gethostname(), "pid": os.getpid(), "slots": self.slots, "in_use": self.in_use,
                "draining": self.draining, "started_at": self.started_at}

    def _beat(self, held: list[str], renew: bool, report: dict | None) -> dict[str, bool]:
        alive = lifecycle.heartbeat(self.owner, held, renew) if held else {}
        if report is not None:
            Worker.report(self.owner, **report)
        return alive

    # -- stopping --------------------------------------------------------------------------

    def drain(self, grace: float | None = None) -> None:
        """Stop taking runs, let them reach a step boundary (or end) within `grace` seconds,
        hand the rest back. Blocks the calling thread; a second call waits for the first."""
        grace = drain_seconds() if grace is None else grace
        future = asyncio.run_coroutine_threadsafe(self._drain(grace), self.loop)
        future.result(grace + STOP_WAIT_SECONDS + 15)

    async def _drain(self, grace: float) -> None:
        if self._drained is None:
            self._drained = self.loop.create_task(self._drain_steps(grace))
        await asyncio.shield(self._drained)

    async def _drain_steps(self, grace: float) -> None:
        self.draining = True
        if self.in_use:
            logger.info("worker %s draining: %d run(s) in flight, %.0f s to reach a step boundary",
                        self.owner, self.in_use, grace)
        if self.report:
            await self.db(Worker.report)(self.owner, **self._report_values())
        deadline = time.monotonic() + grace
        while self.claiming and time.monotonic() < deadline:  # their runs start (and stop) at once
            await asyncio.sleep(0.05)
        if self.tasks:
            await asyncio.wait(list(self.tasks.values()), timeout=max(0.0, deadline - time.monotonic()))
        for state in list(self.runs.values()):
            self._interrupt(state, Stop.DRAIN)
        if self.tasks:
            await asyncio.wait(list(self.tasks.values()), timeout=STOP_WAIT_SECONDS)
        if self.runs:
            logger.warning("worker %s stopped with %d run(s) still in flight; their leases expire",
                           self.owner, len(self.runs))
        if self.report:
            await self.db(lambda: Worker.objects.filter(name=self.owner).delete())()
        from mash_runtime import doorbell, mcp_tools

        await doorbell.flush_tail_rings()
        await mcp_tools.close_sessions()  # stdio MCP servers stop with their process group

    def close(self) -> None:
        """Drain, stop the loop and close the database threads' connections."""
        self.drain(grace=0)

        async def stop() -> None:
            self._beating.cancel()
            await asyncio.gather(self._beating, return_exceptions=True)
            self.loop.stop()

        asyncio.run_coroutine_threadsafe(stop(), self.loop)
        self._thread.join(10)
        self.loop.close()
        self.db.shutdown()


# -- the process's runner ------------------------------------------------------------------

_runner: tuple[int, Runner] | None = None
_lock = threading.Lock()


def process_runner() -> Runner:
    """This process's runner, made on first use (keyed by pid: a fork makes its own)."""
    global _runner
    with _lock:
        if _runner is None or _runner[0] != os.getpid():
            _runner = (os.getpid(), Runner())
        return _runner[1]


def close_process_runner() -> None:
    global _runner
    with _lock:
        held, _runner = _runner, None
    if held is not None and held[0] == os.getpid():
        held[1].close()


def start_worker() -> Runner:
    """Called when a django-q2 worker process starts (its main thread): the runner, with a
    heartbeat row, and the ways this process stops draining it."""
    global _runner
    import multiprocessing.util

    with _lock:
        if _runner is not None and _runner[0] == os.getpid():
            runner = _runner[1]
        else:
            runner = Runner(report=True)
            _runner = (os.getpid(), runner)
    # Whatever ends this process's work loop (django-q2's STOP, recycling, a timeout, the
    # SystemExit below) runs multiprocessing's exit finalizers before the process exits.
    multiprocessing.util.Finalize(None, _drain_at_exit, exitpriority=100)
    signal.signal(signal.SIGTERM, _on_sigterm)
    logger.info("worker %s ready: %d slots, %d database threads", runner.owner, runner.slots, runner.db.size)
    return runner


_exiting = False


def _on_sigterm(signum, frame) -> None:
    # Leave django-q2's loop (from a blocking queue read, the lock it holds is released on
    # the way out); the exit finalizer drains. A second SIGTERM during the drain is ignored.
    global _exiting
    if _exiting:
        return
    _exiting = True
    raise SystemExit(0)


def _drain_at_exit() -> None:
    global _exiting
    _exiting = True
    held = _runner
    if held is None or held[0] != os.getpid():
        return
    try:
        held[1].drain()
    except Exception:
        logger.warning("draining at exit failed", exc_info=True)


def run_request_task(request_id: str) -> str:
    """The django-q2 task: deliver `request_id` to this process's runner."""
    return process_runner().submit(request_id).value
