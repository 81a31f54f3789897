"""Log every API request (under /api/ and /h2a/, and `/mcp`) to `ApiRequestLog`.

`/mcp` never passes through Django: mash_api.mcp_endpoint logs it with the functions
here (`read_request_body`, `build_entry`, `write_entry`), so its rows are built, redacted,
clipped and batched exactly as these.

Async-capable, because under ASGI a sync-only middleware costs a thread hop on every
request (ecosystem notes). In async mode rows are not written on the response path:
they are buffered and written in batches, one INSERT per batch, at most
MASH_API_LOG_FLUSH_SECONDS (default 0.1 s) after the response; a row per request in its
own transaction was a tenth of the web process's CPU under load. A process killed hard
loses at most that window of log rows; a clean exit writes them. With the setting at 0
each row is written before the response returns, as in sync mode. Logging is best
effort: whatever goes wrong while building or writing a row, the response goes out
unchanged.

Secrets in URLs never reach a row: the values of known credential parameters (`api_key`,
`token`, `password`, ... see SECRET_QUERY_PARAMS) are replaced by `[redacted]` in the stored
query string and in URL-valued headers (Referer, Location); credential headers are redacted
as the model module says. `redact_url` also filters daphne's access log (`mash host serve
--access-log`).

Not logged: `/api/v1/health` and `/h2a/health` (probes would drown the log) and the
API-log routes themselves (`/api/v1/telemetry/api/...`; reading the log would grow
it, and its stream would log its own polls). Streaming responses are logged when
their headers are ready and their body is never touched: consuming it would break
the stream.
"""

from __future__ import annotations

import asyncio
import atexit
import contextvars
import logging
import re
import time
from typing import Any
from urllib.parse import unquote_plus

from asgiref.sync import iscoroutinefunction, markcoroutinefunction, sync_to_async
from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from mash_runtime.conf import conf
from mash_runtime.db import insert_rows
from mash_telemetry.models import REDACTED, ApiRequestLog, clean_text, clip_body, redact_headers

logger = logging.getLogger("mash_telemetry")

LOGGED_PREFIXES = ("/api/", "/h2a/")
LOGGED_PATHS = frozenset({"/mcp", "/mcp/"})
SKIPPED_PATHS = frozenset({"/api/v1/health", "/api/v1/health/", "/h2a/health", "/h2a/health/"})
SKIPPED_PREFIXES = ("/api/v1/telemetry/api/",)


# Query parameter names (lower-cased, '-' read as '_') whose values are credentials.
SECRET_QUERY_PARAMS = frozenset({"api_key", "apikey", "key", "token", "access_token", "password", "secret"})
# Headers whose values are URLs, which may carry such a query.
URL_HEADERS = frozenset({"referer", "location", "content-location"})
_QUERY_SEPARATORS = re.compile(r"([&;])")  # ';' too: some clients use it, and a log must not care


def redact_query(query: str) -> str:
    """`query` as sent, but with the value of every secret parameter replaced by [redacted]."""
    if not query:
        return query
    pieces = _QUERY_SEPARATORS.split(query)
    for index in range(0, len(pieces), 2):
        name, sep, value = pieces[index].partition("=")
        if sep and value and unquote_plus(name).strip().lower().replace("-", "_") in SECRET_QUERY_PARAMS:
            pieces[index] = f"{name}={REDACTED}"
    return "".join(pieces)


def redact_url(url: str) -> str:
    """A URL or request target with its query's secret values redacted (see `redact_query`)."""
    path, sep, query = url.partition("?")
    if not sep:
        return url
    query, hash_sep, fragment = query.partition("#")
    return f"{path}?{redact_query(query)}{hash_sep}{fragment}"


def logged_headers(headers) -> dict[str, str]:
    return {name: (redact_url(value) if name.lower() in URL_HEADERS else value)
            for name, value in redact_headers(headers).items()}


def should_log(path: str) -> bool:
    if path in LOGGED_PATHS:
        return bool(conf.API_LOG)
    if not path.startswith(LOGGED_PREFIXES) or path in SKIPPED_PATHS:
        return False
    if path.startswith(SKIPPED_PREFIXES) or path == "/api/v1/telemetry/api":
        return False
    return bool(conf.API_LOG)


def read_request_body(request) -> tuple[str, bool]:
    """The request body as logged text, read so that the view can still read it.

    Django caches `request.body` and re-serves it to later readers (DRF included), so
    reading it before the view is safe, within the limits Django itself would apply.
    Bodies Django would refuse to hold in memory, multipart uploads (left to the
    streaming upload handlers) and bodies someone already consumed are not captured.
    """
    try:
        length = int(request.META.get("CONTENT_LENGTH") or 0)
    except (TypeError, ValueError):
        length = 0
    if length <= 0:
        return "", False
    if str(request.META.get("CONTENT_TYPE", "")).lower().startswith("multipart/"):
        return f"[multipart body not captured: {length} bytes]", True
    limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    if limit is not None and length > limit:
        return f"[body not captured: {length} bytes]", True
    try:
        body = request.body
    except Exception:  # already consumed as a stream, unreadable, too big: leave it to the view
        return "[body not captured]", False
    return clip_body(body)


def response_body(response) -> tuple[str, bool]:
    if getattr(response, "streaming", False):
        return "", False
    if not getattr(response, "is_rendered", True):
        return "[body not rendered]", False
    return clip_body(response.content)


def build_entry(request, response, started: float, request_body: tuple[str, bool]) -> dict[str, Any]:
    match = getattr(request, "resolver_match", None)
    route = ""
    if match is not None:
        route = match.route or match.view_name or ""
    body, body_truncated = response_body(response)
    return {
        "method": (request.method or "")[:16],
        "path": clean_text(request.path[:2048]),
        "query_string": clean_text(redact_query(request.META.get("QUERY_STRING", "") or "")),
        "route": clean_text(route[:512]),
        "status_code": response.status_code,
        "duration_ms": round((time.perf_counter() - started) * 1000.0, 3),
        # REMOTE_ADDR only: X-Forwarded-For is client-controlled unless a trusted proxy
        # rewrites it (daphne --proxy-headers puts the real address in REMOTE_ADDR then).
        "client": str(request.META.get("REMOTE_ADDR") or "")[:64],
        "request_headers": logged_headers(request.headers),
        "request_body": request_body[0],
        "request_body_truncated": request_body[1],
        "response_headers": logged_headers(response.headers),
        "response_body": body,
        "response_body_truncated": body_truncated,
        "streaming": bool(getattr(response, "streaming", False)),
        "created_at": timezone.now(),  # the request's time, not the (batched) write's
    }


def save_entry(entry: dict[str, Any]) -> None:
    try:
        # A savepoint: a failed insert must not poison a transaction the caller may hold.
        with transaction.atomic():
            ApiRequestLog.objects.create(**entry)
    except Exception:
        logger.warning("could not write the API request log row for %s %s", entry.get("method"), entry.get("path"),
                       exc_info=True)
    if entry.get("streaming"):
        release_connection()


def save_entries(entries: list[dict[str, Any]]) -> None:
    """Write a batch in one INSERT; if that fails, row by row, so one bad row loses only itself."""
    try:
        with transaction.atomic():
            insert_rows([ApiRequestLog(**entry) for entry in entries])
    except Exception:
        for entry in entries:
            save_entry({**entry, "streaming": False})
    release_connection()


def release_connection() -> None:
    # Django hands the connection back only when the response ends, which for a stream may
    # be hours away (and a batch writer's thread has no response at all): release it now
    # (ecosystem notes: held connections starve the pool).
    try:
        if not connection.in_atomic_block:
            connection.close()
    except Exception:
        logger.warning("API request log: could not release the connection", exc_info=True)


class BatchWriter:
    """Buffers log rows of async requests and writes them in batches from the event loop."""

    MAX_BATCH = 500

    def __init__(self) -> None:
        self.buffer: list[dict[str, Any]] = []
        self.task: asyncio.Task | None = None
        atexit.register(self.write_now)

    def add(self, entry: dict[str, Any], delay: float) -> None:
        self.buffer.append(entry)
        loop = asyncio.get_running_loop()
        if self.task is None or self.task.done() or self.task.get_loop() is not loop:
            # A context of its own: the request's would tie the write to that request's
            # (finished) thread and start a new thread for every batch.
            self.task = loop.create_task(self._drain(delay), context=contextvars.Context())

    async def _drain(self, delay: float) -> None:
        await asyncio.sleep(delay)  # gather what the next requests add
        await self.flush()

    async def flush(self) -> None:
        """Write everything buffered so far (tests and shutdown call it too)."""
        while self.buffer:
            batch, self.buffer = self.buffer[:self.MAX_BATCH], self.buffer[self.MAX_BATCH:]
            try:
                await sync_to_async(save_entries)(batch)
            except Exception:  # save_entries swallows its own errors; this guards the hop itself
                logger.warning("API request log: batch write failed", exc_info=True)

    def write_now(self) -> None:
        """Last chance at exit: write what a clean shutdown left in the buffer."""
        batch, self.buffer = self.buffer, []
        if batch:
            try:
                save_entries(batch)
            except Exception:
                logger.warning("API request log: %d rows lost at exit", len(batch), exc_info=True)


batch_writer = BatchWriter()


async def write_entry(entry: dict[str, Any]) -> None:
    """Hand a row to the batch writer, or write it now when MASH_API_LOG_FLUSH_SECONDS is 0."""
    delay = float(conf.API_LOG_FLUSH_SECONDS)
    if delay > 0:
        batch_writer.add(entry, delay)
        return
    try:
        await sync_to_async(save_entry)(entry)
    except Exception:  # save_entry swallows its own errors; this guards the hop itself
        logger.warning("API request log: write failed", exc_info=True)


class ApiRequestLogMiddleware:
    sync_capable = True
    async_capable = True

    def __init__(self, get_response):
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def _begin(self, request) -> tuple[float, tuple[str, bool]] | None:
        try:
            if not should_log(request.path_info):
                return None
            return time.perf_counter(), read_request_body(request)
        except Exception:
            logger.warning("API request log: could not capture the request", exc_info=True)
            return None

    def _entry(self, request, response, begun) -> dict[str, Any] | None:
        try:
            return build_entry(request, response, begun[0], begun[1])
        except Exception:
            logger.warning("API request log: could not capture the response", exc_info=True)
            return None

    def __call__(self, request):
        if self.is_async:
            return self.__acall__(request)
        begun = self._begin(request)
        response = self.get_response(request)
        if begun is not None:
            entry = self._entry(request, response, begun)
            if entry is not None:
                save_entry(entry)
        return response

    async def __acall__(self, request):
        begun = self._begin(request)
        response = await self.get_response(request)
        if begun is not None:
            entry = self._entry(request, response, begun)
            if entry is not None:
                await write_entry(entry)
        return response
