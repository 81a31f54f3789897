"""Text formats shared by the admin, the telemetry pages and the CLI (a leaf: no Django)."""

from __future__ import annotations

import json
import math
from typing import Any


def duration_text(value, *, compact: bool = False) -> str:
    """Milliseconds as a person reads them: `850 ms`, `1.2 s`, `3m 05s`, `2h 04m` (`–` for none).

    `compact` is the CLI's form: `?` for none, whole minutes and seconds without a space
    (`3m05s`, rounded to the second, never hours)."""
    missing = "?" if compact else "–"
    if value is None or value == "":
        return missing
    try:
        value = float(value)
    except (TypeError, ValueError):
        return missing
    if not math.isfinite(value):
        return missing
    if value < 1000:
        return f"{int(round(value))} ms"
    if value < 60_000:
        return f"{value / 1000:.1f} s"
    if compact:
        minutes, seconds = divmod(int(round(value / 1000)), 60)
        return f"{minutes}m{seconds:02d}s"
    minutes, seconds = divmod(int(value / 1000), 60)
    if minutes < 60:
        return f"{minutes}m {seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m"


def pretty(value: Any) -> str:
    """A stored value as indented JSON (a string as it is)."""
    if isinstance(value, str):
        return value
    try:
        return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True, default=str)
    except (TypeError, ValueError):
        return str(value)
