"""django-q2's Redis broker, with a client that reconnects and retries.

The stock broker builds its client from the bare URL (`redis.from_url`): a dropped
connection (a Redis restart, CLIENT KILL) raised in the pusher, which died until the
sentinel restarted it ten seconds later, and no task was picked up meanwhile. Configured
as `Q_CLUSTER["broker_class"]` with the URL left in `Q_CLUSTER["redis"]`, so settings need
not import redis (19 MiB, and a worker cluster is six processes): only the processes that
talk to the broker load it.
"""

from __future__ import annotations

from django_q.brokers.redis_broker import Redis
from django_q.conf import Conf


class RetryingRedis(Redis):
    @staticmethod
    def get_connection(list_key: str | None = None):
        import redis
        from redis.backoff import ExponentialBackoff
        from redis.exceptions import ConnectionError as RedisConnectionError
        from redis.exceptions import TimeoutError as RedisTimeoutError
        from redis.retry import Retry

        return redis.Redis.from_url(Conf.REDIS, retry=Retry(ExponentialBackoff(cap=2, base=0.05), 5),
                                    retry_on_error=[RedisConnectionError, RedisTimeoutError],
                                    health_check_interval=30)
