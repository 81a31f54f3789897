"""Formats shared by the template filters, the SVG charts and `page_data` (a leaf module)."""

from __future__ import annotations


def duration_text(value) -> str:
    """Milliseconds as a person reads them: `850 ms`, `1.2 s`, `3m 05s`, `2h 04m` (`–` for none)."""
    if value is None or value == "":
        return "–"
    try:
        value = float(value)
    except (TypeError, ValueError):
        return "–"
    if value < 1000:
        return f"{value:.0f} ms"
    if value < 60_000:
        return f"{value / 1000:.1f} s"
    minutes, seconds = divmod(int(value / 1000), 60)
    if minutes < 60:
        return f"{minutes}m {seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m"
