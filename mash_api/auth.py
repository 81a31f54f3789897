"""API-key checks shared by DRF views, SSE views and WebSocket consumers.

Keys come from `MASH_API_KEY` and from active `ApiKey` rows. With neither, the API is
open (the server then refuses non-loopback addresses unless told `--insecure`).
A present Bearer token is the only credential looked at, even when wrong: a wrong
Bearer beside a right X-API-Key is still 401.
"""

from __future__ import annotations

import hmac
import ipaddress
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

from django.conf import settings
from django.http.request import split_domain_port, validate_host
from django.middleware.csrf import CsrfViewMiddleware
from django.utils import timezone

from mash_api.models import ApiKey
from mash_runtime.conf import conf

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
    if conf.API_KEY:
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
    env_key = conf.API_KEY
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


SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})


class _CsrfCheck(CsrfViewMiddleware):
    def _reject(self, request, reason):
        return reason


def csrf_refusal(request) -> str | None:
    """Why Django's CSRF check (Origin or Referer, then the token) refuses this request, or None.

    Only cookie-authenticated unsafe requests are checked: a browser sends the session
    cookie to us from any page, so the cookie alone proves nothing; an API key proves
    the caller knows a secret no foreign page has.
    """
    if request.method in SAFE_METHODS:
        return None
    check = _CsrfCheck(lambda _request: None)
    check.process_request(request)
    return check.process_view(request, None, (), {})


def permission_refusal(principal: Principal | None, user, method: str, permission: str | None) -> str | None:
    """Why a logged-in user may not make this call, or None.

    A staff session reads what the API serves; a write takes the model permission the
    admin would ask for (`permission`, e.g. "mash_runtime.add_request"); a write that
    names none is for superusers only. Key-authenticated callers are not users: a key
    is all the API asks of them.
    """
    if principal is None or principal.kind != "staff" or method in SAFE_METHODS:
        return None
    if permission is None:
        return None if user.is_superuser else "only a superuser may do this with a browser session; use an API key"
    if user.has_perm(permission):
        return None
    return f"your account lacks the permission {permission!r}; ask an administrator, or use an API key"


def origin_refusal(headers, principal: Principal | None) -> str | None:
    """Why a cookie-authenticated WebSocket's Origin is refused, or None (cross-site
    WebSocket hijacking: a browser opens sockets from any page, with our cookie).

    The Origin must be this host (the Host header, itself one of ALLOWED_HOSTS) or one of
    CSRF_TRUSTED_ORIGINS. Browsers always send Origin on a WebSocket; a client without
    one is not a browser and should present a key.
    """
    if principal is None or principal.kind != "staff":
        return None
    origin = headers.get("origin") or headers.get("Origin") or ""
    if not origin:
        return "a browser session needs an Origin header"
    if origin in settings.CSRF_TRUSTED_ORIGINS:
        return None
    parsed = urlsplit(origin)
    host = (headers.get("host") or headers.get("Host") or "").strip().lower()
    if parsed.scheme in ("http", "https") and parsed.netloc.lower() == host and host:
        domain, _port = split_domain_port(host)
        if domain and validate_host(domain, settings.ALLOWED_HOSTS):
            return None
    return f"Origin {origin!r} is not this host"


class InsecureBindError(ValueError):
    """Serving an open API (no key configured) on a non-loopback address without --insecure."""


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 (also IPv4-mapped and bracketed) and localhost names."""
    name = (host or "").strip().lower()
    if name.startswith("[") and name.endswith("]"):
        name = name[1:-1]
    name = name.split("%", 1)[0]  # an IPv6 zone id does not change the address
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return bool(address.is_loopback or (mapped is not None and mapped.is_loopback))


def check_bind_address(host: str, insecure: bool) -> None:
    """Refuse to serve an open API beyond this machine: raise InsecureBindError, else return.

    Reads the configuration afresh (not the 5 s cache): this runs once, at start-up.
    """
    if insecure or is_loopback(host):
        return
    if conf.API_KEY:
        return
    from django.db import DatabaseError

    try:
        if ApiKey.objects.active().exists():
            return
    except DatabaseError:  # no table yet (unmigrated database): no stored key can exist
        pass
    shown = host if host else "all interfaces"
    raise InsecureBindError(
        f"Refusing to serve the API on {shown} with no API key configured: set MASH_API_KEY (or pass --api-key, "
        f"or create one with 'manage.py apikey create --name NAME'), bind 127.0.0.1, or pass --insecure to serve "
        f"it open anyway.")
