"""The API request log: one row per request under /api/ and /h2a/ (see middleware.py).

Secrets never reach this table: credential headers are redacted before the row is
built, and bodies are cut at `BODY_LIMIT` bytes. Streaming responses (SSE) are
marked `streaming` and their bodies are not captured.
"""

from __future__ import annotations

from typing import Any

from django.db import models, transaction
from django.utils import timezone

BODY_LIMIT = 4096
REDACTED = "[redacted]"
# Lower-cased header names whose values are credentials.
REDACTED_HEADERS = frozenset({"authorization", "proxy-authorization", "x-api-key", "cookie", "set-cookie"})


def clean_text(value: str) -> str:
    """PostgreSQL rejects NUL in text and JSON columns: keep the row, mark the character."""
    return value.replace("\x00", "\ufffd") if "\x00" in value else value


def redact_headers(headers) -> dict[str, str]:
    return {clean_text(str(name)): (REDACTED if str(name).lower() in REDACTED_HEADERS else clean_text(str(value)))
            for name, value in headers.items()}


def clip_body(raw: bytes | str | None, limit: int = BODY_LIMIT) -> tuple[str, bool]:
    """Text of the first `limit` bytes of a body, and whether anything was cut."""
    if raw is None:
        return "", False
    data = raw.encode() if isinstance(raw, str) else bytes(raw)
    truncated = len(data) > limit
    # A cut may split a UTF-8 sequence: `replace` keeps the row valid text.
    return clean_text(data[:limit].decode("utf-8", errors="replace")), truncated


class ApiRequestLog(models.Model):
    method = models.CharField(max_length=16)
    path = models.CharField(max_length=2048)
    query_string = models.TextField(blank=True, default="")
    # The URL pattern the request resolved to (e.g. "api/v1/agent/<str:agent_id>"); blank when none did.
    route = models.CharField(max_length=512, blank=True, default="")
    status_code = models.PositiveSmallIntegerField(db_index=True)
    duration_ms = models.FloatField()
    client = models.CharField(max_length=64, blank=True, default="")
    request_headers = models.JSONField(default=dict, blank=True)
    request_body = models.TextField(blank=True, default="")
    request_body_truncated = models.BooleanField(default=False)
    response_headers = models.JSONField(default=dict, blank=True)
    response_body = models.TextField(blank=True, default="")
    response_body_truncated = models.BooleanField(default=False)
    # Streaming responses (SSE, files) are logged when their headers are ready; their body is not captured.
    streaming = models.BooleanField(default=False)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        ordering = ["-id"]
        verbose_name = "API request"
        verbose_name_plural = "API request log"

    def __str__(self) -> str:
        return f"{self.method} {self.path} -> {self.status_code}"

    @classmethod
    def prune(cls, cutoff, batch: int, dry: bool, progress) -> int:
        """Delete the rows logged before `cutoff`, `batch` per transaction (only count them when
        `dry`): the log's part of `mash prune` (registered in apps.py, see mash_runtime.retention)."""
        old = cls.objects.filter(created_at__lt=cutoff)
        if dry:
            return old.count()
        task = progress.add_task("API log", total=old.count())
        deleted = 0
        while True:
            ids = list(old.order_by("pk").values_list("pk", flat=True)[:batch])
            if not ids:
                break
            with transaction.atomic():
                deleted += cls.objects.filter(pk__in=ids).delete()[0]
            progress.advance(task, len(ids))
        return deleted

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "method": self.method,
            "path": self.path,
            "query_string": self.query_string,
            "route": self.route or None,
            "status_code": self.status_code,
            "duration_ms": self.duration_ms,
            "client": self.client or None,
            "request_headers": self.request_headers,
            "request_body": self.request_body,
            "request_body_truncated": self.request_body_truncated,
            "response_headers": self.response_headers,
            "response_body": self.response_body,
            "response_body_truncated": self.response_body_truncated,
            "streaming": self.streaming,
            "created_at": self.created_at.timestamp(),
        }
