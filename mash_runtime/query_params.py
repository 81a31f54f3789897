"""Query-string values the read services take as the client sent them (`?limit=`, `?offset=`,
epoch-second times), checked into Python values or a 422 VALIDATION_ERROR naming the parameter."""

from __future__ import annotations

from datetime import datetime
from datetime import timezone as dt_timezone
from typing import Any

from mash_runtime.errors import invalid


def parse_limit(value: Any, *, default: int, maximum: int, name: str = "limit") -> int:
    if value in (None, ""):
        return default
    try:
        limit = int(str(value).strip())
    except ValueError:
        raise invalid(["query", name], "not an integer", "int_parsing", message=f"{name} must be an integer") from None
    if not 1 <= limit <= maximum:
        raise invalid(["query", name], f"must be between 1 and {maximum}",
                      message=f"{name} must be between 1 and {maximum}")
    return limit


def parse_offset(value: Any) -> int:
    try:
        skip = int(value or 0)
        if skip < 0:
            raise ValueError
    except (TypeError, ValueError):
        raise invalid(["query", "offset"], "invalid", "int_parsing",
                      message="offset must be a non-negative integer") from None
    return skip


def parse_epoch(value: Any, name: str) -> datetime | None:
    if value in (None, ""):
        return None
    try:
        return datetime.fromtimestamp(float(value), tz=dt_timezone.utc)
    except (TypeError, ValueError, OverflowError, OSError):
        raise invalid(["query", name], "not a number", "float_parsing",
                      message=f"{name} must be epoch seconds") from None
