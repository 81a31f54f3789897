"""Token deltas: the text of a running LLM step, sent to the clients following it as the
model writes it.

Deltas are ephemeral: they ride the request's doorbell group on the channel layer and are
never stored; the step's whole text is stored as before, so a replay, a reconnect with
`Last-Event-ID` or a recovered crash shows the stored step. A worker streams a call only
while some stream asked for tokens (`?stream=tokens`): that stream's web process keeps a
Redis key alive (`mark_listening`), and the worker reads it once per LLM call. Without
Redis (the embedded default's in-memory layer reaches no other process) there are no
deltas: a token stream then shows whole steps, as any stream does.

A delta frame is `{request_id, step_key, attempt, index, text}`: `index` counts the
deltas of one attempt from 0; a step retried after a transient error starts again at a
higher `attempt`, and a client shows only the latest attempt's text.
"""

from __future__ import annotations

import logging
import time


from mash_runtime.conf import conf
from mash_runtime.doorbell import MESSAGE_TYPE, request_group

logger = logging.getLogger("mash_runtime.tokens")

DELTA_EVENT = "agent.delta"
LISTEN_SECONDS = 45  # a token stream refreshes its key at every keep-alive (15 s)
# Pieces written within this long go out as one delta: a publish per token would cost more
# than the text it carries, and no reader sees 50 ms.
COALESCE_SECONDS = 0.05

def enabled() -> bool:
    return bool(conf.REDIS_URL)


def _key(request_id) -> str:
    return f"mash:tokens:{str(request_id).replace('-', '')}"


def _client():
    """The asyncio Redis client of the running loop (a client is bound to the loop it was
    made on), shared like the providers' SDK clients and gone with its loop."""
    import redis.asyncio as aioredis

    from mash_core.llm.clients import shared_client

    return shared_client(("mash-tokens-redis", conf.REDIS_URL), lambda: aioredis.from_url(conf.REDIS_URL))


async def mark_listening(request_id) -> None:
    """A stream of this request wants its tokens (for the next LISTEN_SECONDS)."""
    if not enabled():
        return
    try:
        await _client().set(_key(request_id), b"1", ex=LISTEN_SECONDS)
    except Exception:  # tokens are a nicety: the stream still gets every stored step
        logger.warning("could not mark %s as listening for tokens", request_id, exc_info=True)


_sync_client = None


def mark_listening_sync(request_id) -> None:
    """`mark_listening` from sync code: a submit that says its client will follow tokens
    (`?stream=tokens` on the POST), before the request exists, so its first model call
    streams even when the worker starts it before the client's stream opens."""
    global _sync_client
    if not enabled():
        return
    try:
        if _sync_client is None:
            import redis

            _sync_client = redis.from_url(conf.REDIS_URL)
        _sync_client.set(_key(request_id), b"1", ex=LISTEN_SECONDS)
    except Exception:
        logger.warning("could not mark %s as listening for tokens", request_id, exc_info=True)


async def listening(request_id) -> bool:
    if not enabled():
        return False
    try:
        return bool(await _client().exists(_key(request_id)))
    except Exception:
        logger.warning("could not check token listeners of %s", request_id, exc_info=True)
        return False


class DeltaSender:
    """The `TextDeltas` of one attempt of one step: pieces gathered for COALESCE_SECONDS,
    then sent as one delta; `aclose` sends what is left (before the step is stored, so a
    delta never arrives after its step)."""

    def __init__(self, request_id, step_key: str, attempt: int):
        from channels.layers import get_channel_layer

        self.layer = get_channel_layer()
        self.request_id = str(request_id)
        self.group = request_group(request_id)
        self.step_key = step_key
        self.attempt = attempt
        self.index = 0
        self.buffer: list[str] = []
        self.started = 0.0
        self.failed = False

    async def __call__(self, text: str) -> None:
        if not text or self.failed:
            return
        if not self.buffer:
            self.started = time.monotonic()
        self.buffer.append(text)
        if time.monotonic() - self.started >= COALESCE_SECONDS:
            await self._send()

    async def aclose(self) -> None:
        if self.buffer and not self.failed:
            await self._send()

    async def _send(self) -> None:
        text, self.buffer = "".join(self.buffer), []
        delta = {"request_id": self.request_id, "step_key": self.step_key, "attempt": self.attempt,
                 "index": self.index, "text": text}
        self.index += 1
        try:
            await self.layer.group_send(self.group, {"type": MESSAGE_TYPE, "group": self.group, "delta": delta})
        except Exception:  # the stored step still arrives; stop trying for this attempt
            self.failed = True
            logger.warning("token delta for %s failed", self.request_id, exc_info=True)
