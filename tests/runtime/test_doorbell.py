"""Doorbells: what a ring carries, and how rings for tails are held back."""

from __future__ import annotations

import asyncio

from mash_runtime import doorbell
from mash_runtime.doorbell import TAIL_RING_SECONDS, TailBells, carried_events
from mash_runtime.models import RuntimeEvent


class Layer:
    def __init__(self):
        self.sent: list[tuple[float, str, dict]] = []

    async def group_send(self, group, message):
        self.sent.append((asyncio.get_running_loop().time(), group, message))


def test_a_tail_is_rung_at_once_then_at_most_once_per_interval():
    async def scenario():
        layer, bells = Layer(), TailBells()
        await bells.ring(layer, "tail", {"seq": 1})
        await bells.ring(layer, "tail", {"seq": 2})
        await bells.ring(layer, "tail", {"seq": 3})  # replaces the held ring: a tail only needs waking
        await bells.ring(layer, "other", {"seq": 9})  # groups are independent
        assert [(g, m["seq"]) for _, g, m in layer.sent] == [("tail", 1), ("other", 9)]
        await bells.timers["tail"]  # the held ring goes out when the interval ends
        assert [(g, m["seq"]) for _, g, m in layer.sent] == [("tail", 1), ("other", 9), ("tail", 3)]
        first, held = layer.sent[0][0], layer.sent[2][0]
        assert held >= first + TAIL_RING_SECONDS - 1e-3  # not before (loop clock; asyncio.sleep never wakes early)
        assert not bells.timers and not bells.held

    asyncio.run(scenario())


def test_flush_sends_held_rings_at_once():
    async def scenario():
        layer, bells = Layer(), TailBells()
        await bells.ring(layer, "tail", {"seq": 1})
        await bells.ring(layer, "tail", {"seq": 2})
        await bells.flush()
        assert [m["seq"] for _, _, m in layer.sent] == [1, 2] and not bells.timers and not bells.held

    asyncio.run(scenario())


def test_flush_survives_a_held_ring_whose_timer_fires_during_it():
    class SlowLayer(Layer):
        slow = False

        async def group_send(self, group, message):
            if self.slow:  # long enough for the other group's timer to fire meanwhile
                await asyncio.sleep(TAIL_RING_SECONDS * 2)
            await super().group_send(group, message)

    async def scenario():
        layer, bells = SlowLayer(), TailBells()
        for seq in (1, 2):
            await bells.ring(layer, "a", {"seq": seq})
            await bells.ring(layer, "b", {"seq": seq})  # the second ring of each is held, with a timer
        assert set(bells.held) == {"a", "b"}
        layer.slow = True
        await bells.flush()  # while it sends a's, b's timer fires and sends b's itself
        await asyncio.sleep(TAIL_RING_SECONDS * 3)
        assert sorted((g, m["seq"]) for _, g, m in layer.sent) == [("a", 1), ("a", 2), ("b", 1), ("b", 2)]
        assert not bells.timers and not bells.held

    asyncio.run(scenario())


def test_small_events_ride_along_and_big_ones_do_not():
    small = RuntimeEvent(id=1, request_id="r", seq=1, event_type="e", agent_id="a", session_id="s",
                         trace_id="t", step_key="", payload={"x": 1}, created_at=1.0)
    [carried] = carried_events([small])
    assert carried["seq"] == 1 and carried["payload"] == '{"x":1}' and carried["request_id"] == "r"
    big = RuntimeEvent(id=2, request_id="r", seq=2, event_type="e", agent_id="a", session_id="s", trace_id="t",
                       step_key="", payload={"x": "y" * doorbell.CARRY_LIMIT}, created_at=1.0)
    assert carried_events([small, big]) is None
