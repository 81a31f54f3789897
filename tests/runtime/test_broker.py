"""The django-q2 broker with Redis reconnects after its connection is killed, instead of
failing the process that holds it (the pusher, the web's enqueue)."""

import os
import threading
import time

import pytest
import redis as redis_lib

URL = os.environ.get("MASH_TEST_BROKER_REDIS_URL", "redis://127.0.0.1:6379/10")


@pytest.fixture
def broker(monkeypatch):
    from django_q.conf import Conf

    try:
        redis_lib.Redis.from_url(URL).ping()
    except redis_lib.exceptions.ConnectionError:
        pytest.skip(f"no Redis at {URL}")
    monkeypatch.setattr(Conf, "REDIS", URL)
    from mash_runtime.run.broker import RetryingRedis

    b = RetryingRedis(list_key="mash-test-broker")
    b.delete_queue()
    yield b
    b.delete_queue()


def kill_soon(client_id: int, after: float = 0.3) -> threading.Thread:
    def kill():
        time.sleep(after)
        redis_lib.Redis.from_url(URL).client_kill_filter(_id=client_id)

    thread = threading.Thread(target=kill)
    thread.start()
    return thread


def test_a_connection_killed_during_a_blocking_dequeue_is_reconnected(broker):
    # The pusher waits in BLPOP; the stock client raised ConnectionError out of it (and the
    # pusher died) when Redis dropped the connection meanwhile.
    stock = redis_lib.from_url(URL)
    stock.ping()
    killer = kill_soon(stock.client_id())
    with pytest.raises(redis_lib.exceptions.ConnectionError):
        stock.blpop(broker.list_key, 1)
    killer.join()

    broker.connection.ping()
    killer = kill_soon(broker.connection.client_id())
    assert broker.dequeue() is None  # waited out its second, reconnected, no error
    killer.join()
    broker.enqueue("after the kill")
    assert [task for _, task in broker.dequeue()] == [b"after the kill"]


def test_settings_name_the_retrying_broker_without_importing_redis():
    import subprocess
    import sys

    code = ("import os, sys; os.environ['MASH_REDIS_URL'] = 'redis://127.0.0.1:6379/10';"
            "os.environ['DJANGO_SETTINGS_MODULE'] = 'mash_project.settings';"
            "from django.conf import settings; settings.Q_CLUSTER;"
            "print(settings.Q_CLUSTER['broker_class'], 'redis' in sys.modules)")
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "MASH_DATABASE_URL")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["mash_runtime.run.broker.RetryingRedis", "False"]
