"""One clock for every page: the server's time zone, labelled, seconds shown.

Every timestamp on the telemetry pages and in the admin columns goes through `when`:
`Dec 02 08:04:49 UTC` (the server's `TIME_ZONE`, named), a relative time next to it
(`3 min ago`), and the full timestamp with milliseconds and UTC offset on hover. The
live tail formats the times of new events in the browser; it follows the same rule
with the zone name and labels the page hands it (`zone_attrs`, `static/.../clock.js`),
so a browser in New York shows what the server-rendered lists show.
"""

from __future__ import annotations

import datetime as dt
import json

from django.utils import timezone
from django.utils.html import format_html
from django.utils.safestring import SafeString

MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def as_datetime(value) -> dt.datetime | None:
    """An aware datetime from a datetime or from epoch seconds (events store floats)."""
    if value is None or value == "":
        return None
    if isinstance(value, dt.datetime):
        return value if timezone.is_aware(value) else timezone.make_aware(value, dt.timezone.utc)
    try:
        return dt.datetime.fromtimestamp(float(value), tz=dt.timezone.utc)
    except (TypeError, ValueError, OverflowError, OSError):
        return None


def offset_text(local: dt.datetime) -> str:
    """`+05:30`, `-05:00`, `+00:00`."""
    seconds = int(local.utcoffset().total_seconds()) if local.utcoffset() is not None else 0
    sign = "-" if seconds < 0 else "+"
    hours, rest = divmod(abs(seconds), 3600)
    return f"{sign}{hours:02d}:{rest // 60:02d}"


def zone_label(local: dt.datetime) -> str:
    """The zone's abbreviation (`UTC`, `EST`, `IST`); `UTC-03:00` where the zone has none."""
    name = local.tzname() or ""
    if not name or name[0] in "+-" or name[0].isdigit():
        return f"UTC{offset_text(local)}"
    return name


def short(local: dt.datetime) -> str:
    return f"{MONTHS[local.month - 1]} {local.day:02d} {local:%H:%M:%S}"


def full(local: dt.datetime) -> str:
    return f"{local:%Y-%m-%d %H:%M:%S}.{local.microsecond // 1000:03d} {zone_label(local)} (UTC{offset_text(local)})"


def relative(moment: dt.datetime, now: dt.datetime | None = None) -> str:
    seconds = ((now or timezone.now()) - moment).total_seconds()
    future = seconds < 0
    seconds = abs(seconds)
    if seconds < 5:
        return "just now"
    if seconds < 60:
        text = f"{int(seconds)} s"
    elif seconds < 3600:
        text = f"{int(seconds // 60)} min"
    elif seconds < 86400:
        text = f"{int(seconds // 3600)} h"
    else:
        text = f"{int(seconds // 86400)} d"
    return f"in {text}" if future else f"{text} ago"


def when(value, *, ago: bool = True, now: dt.datetime | None = None) -> SafeString | str:
    """`<time>` in the server's zone: short text and label shown, full timestamp on hover."""
    moment = as_datetime(value)
    if moment is None:
        return "–"
    local = timezone.localtime(moment)
    rel = relative(moment, now)
    if ago:
        return format_html(
            '<time class="when" datetime="{}" title="{} · {}">{} <span class="tz">{}</span></time>'
            ' <span class="ago">{}</span>',
            local.isoformat(timespec="milliseconds"), full(local), rel, short(local), zone_label(local), rel,
        )
    return format_html('<time class="when" datetime="{}" title="{} · {}">{} <span class="tz">{}</span></time>',
                       local.isoformat(timespec="milliseconds"), full(local), rel, short(local), zone_label(local))


def zone_attrs() -> dict[str, str]:
    """What the browser needs to format times by the server's rule: the IANA zone name and
    the zone's labels by UTC offset (standard and summer time, around now)."""
    now = timezone.now()
    labels = {}
    for days in (0, 91, 182, 273):
        local = timezone.localtime(now + dt.timedelta(days=days))
        labels[offset_text(local)] = zone_label(local)
    return {"zone": timezone.get_current_timezone_name(), "labels": json.dumps(labels, sort_keys=True)}
