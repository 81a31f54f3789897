"""PostgreSQL alone: new tasks wake the queue's pusher, and doorbells reach other processes,
by LISTEN/NOTIFY (mash_runtime/run/pg_broker.py, mash_runtime/notify_layer.py).

Every wait here has a fallback far longer than the test's own limit, so only a notification
can end it in time: a broken wake-up fails the test instead of passing slowly."""

import asyncio
import threading

import pytest
from django.db import connection

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(connection.vendor != "postgresql", reason="LISTEN/NOTIFY is PostgreSQL's"),
]


def terminate_listeners(channel: str) -> int:
    """End every other backend that LISTENs on `channel` (as a dropped connection would)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid() AND query ILIKE %s",
            [f'LISTEN "{channel}"'])
        return cursor.fetchone()[0]


def terminate(pid: int) -> bool:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_terminate_backend(%s)", [pid])
        return cursor.fetchone()[0]


@pytest.fixture
def broker(monkeypatch):
    from mash_runtime.run.pg_broker import NotifyingORM

    monkeypatch.setattr(NotifyingORM, "FALLBACK_SECONDS", 120.0)
    b = NotifyingORM(list_key="mash-test-pg-broker")
    b.delete_queue()
    yield b
    b._drop_listener()
    b.delete_queue()


def dequeue_in_thread(broker) -> tuple[threading.Thread, list, threading.Event]:
    got: list = []
    waiting = threading.Event()

    def pusher():
        from django.db import connection as thread_connection

        try:
            while not got:
                waiting.set()
                got.extend(broker.dequeue() or [])
        finally:
            thread_connection.close()

    thread = threading.Thread(target=pusher, daemon=True)
    thread.start()
    return thread, got, waiting


def test_an_enqueue_wakes_a_waiting_pusher(broker):
    thread, got, waiting = dequeue_in_thread(broker)
    assert waiting.wait(30)
    broker.enqueue("payload-1")
    thread.join(30)
    assert not thread.is_alive(), "the pusher slept through the NOTIFY"
    assert [payload for _, payload in got] == ["payload-1"]


def test_the_pusher_listens_again_after_its_connection_drops(broker):
    broker.enqueue("first")
    assert [p for _, p in broker.dequeue()] == ["first"]
    listener = broker._listening[1]
    assert listener is not None
    assert terminate(listener.info.backend_pid)

    thread, got, waiting = dequeue_in_thread(broker)
    assert waiting.wait(30)
    # The dead connection fails the wait (or the drain before the query); the next dequeue
    # opens a new one. Enqueue until the pusher, listening again, is woken by one.
    for n in range(60):
        broker.enqueue(f"after-{n}")
        thread.join(0.5)
        if not thread.is_alive():
            break
    assert not thread.is_alive()
    assert got and got[0][1].startswith("after-")
    # (Whether that dequeue found the task by its query or by a new listener depends on when
    # psycopg notices the dead connection; both deliver it.)


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


def two_processes():
    """Two layers, as in two processes: each has its own listener and sender."""
    from mash_runtime.notify_layer import PostgresNotifyLayer

    return PostgresNotifyLayer(), PostgresNotifyLayer()


def test_a_group_send_reaches_members_in_another_layer_only():
    web, worker = two_processes()

    async def scenario():
        inbox = await web.new_channel(prefix="bells.")
        await web.group_add("mash.req.a", inbox)
        await worker.group_send("mash.req.b", {"type": "mash.doorbell", "seq": 1})  # not a member
        await worker.group_send("mash.req.a", {"type": "mash.doorbell", "group": "mash.req.a", "seq": 2})
        first = await web.receive(inbox)
        await web.group_discard("mash.req.a", inbox)
        await worker.group_send("mash.req.a", {"type": "mash.doorbell", "seq": 3})
        await web.group_add("mash.req.c", inbox)
        await worker.group_send("mash.req.c", {"type": "mash.doorbell", "seq": 4})
        second = await web.receive(inbox)
        await web.close()
        return first, second

    first, second = run(scenario())
    assert first == {"type": "mash.doorbell", "group": "mash.req.a", "seq": 2}
    assert second["seq"] == 4  # seq 3 went to a group the channel had left


def test_a_doorbell_too_big_for_notify_goes_without_its_events():
    web, worker = two_processes()

    async def scenario():
        inbox = await web.new_channel()
        await web.group_add("g", inbox)
        events = [{"seq": 1, "payload": "x" * 9000}]
        await worker.group_send("g", {"type": "mash.doorbell", "seq": 1, "events": events})
        bare = await web.receive(inbox)
        await worker.group_send("g", {"type": "mash.doorbell", "seq": 2, "other": "y" * 9000})  # dropped
        await worker.group_send("g", {"type": "mash.doorbell", "seq": 3})
        after = await web.receive(inbox)
        await web.close()
        return bare, after

    bare, after = run(scenario())
    assert bare == {"type": "mash.doorbell", "seq": 1}
    assert after["seq"] == 3


def test_the_listener_reconnects_after_its_connection_drops():
    web, worker = two_processes()

    async def scenario():
        inbox = await web.new_channel()
        await web.group_add("g", inbox)
        killed = await asyncio.get_running_loop().run_in_executor(None, killer)
        for n in range(100):  # doorbells rung while it reconnects are lost (readers poll)
            await worker.group_send("g", {"type": "mash.doorbell", "seq": n})
            try:
                message = await asyncio.wait_for(web.receive(inbox), 0.5)
            except asyncio.TimeoutError:
                continue
            await web.close()
            return killed, message
        raise AssertionError("no doorbell arrived after the listener's connection was killed")

    def killer():
        from django.db import connection as thread_connection

        try:
            return terminate_listeners("mash_doorbell")
        finally:
            thread_connection.close()

    killed, message = run(scenario())
    assert killed >= 1
    assert message["type"] == "mash.doorbell"


def test_the_settings_choose_notify_on_postgresql_without_redis(settings):
    if settings.REDIS_URL:
        pytest.skip("Redis configured: the broker and layer are Redis's")
    assert settings.Q_CLUSTER["broker_class"] == "mash_runtime.run.pg_broker.NotifyingORM"
    assert settings.CHANNEL_LAYERS["default"]["BACKEND"] == "mash_runtime.notify_layer.PostgresNotifyLayer"


def test_joining_gives_up_when_the_listener_cannot_listen(monkeypatch):
    """A stream whose process cannot LISTEN polls instead of waiting for the database."""
    from mash_runtime import db, notify_layer

    real = db.connect_params
    monkeypatch.setattr(db, "connect_params", lambda alias="default": {**real(alias), "port": 1})  # nobody there
    monkeypatch.setattr(notify_layer, "START_SECONDS", 1.0)
    web = notify_layer.PostgresNotifyLayer()

    async def scenario():
        channel = f"bells.{web.prefix}.x"
        try:
            await web.group_add("g", channel)
        except RuntimeError as exc:
            return exc
        finally:
            await web.close()

    assert "not listening" in str(run(scenario()))
