"""API-key checks shared by DRF views, SSE views and WebSocket consumers.

Keys come from `MASH_API_KEY` and from active `ApiKey` rows. With neither, the API is
open (the server then refuses non-loopback addresses unless told `--insecure`).
A present Bearer token is the only credential looked at, even when wrong: a wrong
Bearer beside a right X-API-Key is still 401.
"""

from __future__ import annotations

import hmac
import time
from dataclasses import dataclass

from django.conf import settings
from django.utils import timezone

from mash_api.models import ApiKey

_CACHE_SECONDS = 5.0
_configured_cache: tuple[float, bool] = (0.0, False)
# last_used_at is advisory: write it at most once a minute per key.
_LAST_USED_EVERY = 60.0
_last_used_written: dict[int, float] = {}


@dataclass(frozen=True)
class Principal:
    kind: str  # "open" | "env" | "key" | "staff"
    name: str = ""


def keys_configured() -> bool:
    global _configured_cache
    if settings.MASH_API_KEY:
        return True
    checked_at, value = _configured_cache
    if time.monotonic() - checked_at < _CACHE_SECONDS:
        return value
    value = ApiKey.objects.active().exists()
    _configured_cache = (time.monotonic(), value)
    return value


def forget_cached_configuration() -> None:
    global _configured_cache
    _configured_cache = (0.0, False)


def presented_key(headers) -> str | None:
    """The key a client presented, by the precedence rule; None when it sent none."""
    authorization = headers.get("Authorization") or headers.get("authorization") or ""
    if authorization:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() == "bearer":
            return token.strip()
    api_key = headers.get("X-API-Key") or headers.get("x-api-key")
    return api_key.strip() if api_key else None


def authenticate_key(key: str | None) -> Principal | None:
    if not keys_configured():
        return Principal("open")
    if not key:
        return None
    env_key = settings.MASH_API_KEY
    if env_key and hmac.compare_digest(key.encode(), env_key.encode()):
        return Principal("env", "MASH_API_KEY")
    row = ApiKey.match(key)
    if row is None:
        return None
    now = time.monotonic()
    if now - _last_used_written.get(row.pk, 0.0) > _LAST_USED_EVERY:
        _last_used_written[row.pk] = now
        ApiKey.objects.filter(pk=row.pk).update(last_used_at=timezone.now())
    return Principal("key", row.name)


def authenticate_headers(headers, user=None) -> Principal | None:
    principal = authenticate_key(presented_key(headers))
    if principal is None and user is not None and getattr(user, "is_active", False) and getattr(user, "is_staff", False):
        # A logged-in staff browser (browsable API, telemetry pages) needs no key.
        return Principal("staff", user.get_username())
    return principal
