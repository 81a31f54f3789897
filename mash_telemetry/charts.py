"""Server-rendered SVG charts: plain Python in, one `<svg>` string out, no JavaScript.

Every label may come from a model, a tool or an API client (agent ids, statuses), so
each one goes through `escape`; numbers are formatted by us. The SVG scales to its
container (`viewBox` + `width=100%`), and every bar carries a `<title>` so hovering
shows the exact value.
"""

from __future__ import annotations

from dataclasses import dataclass

from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

from mash_runtime.presentation.formats import duration_text

# One colour per request status; the CSS legend uses the same `status-*` names.
STATUS_COLORS = {
    "completed": "#2f9e44",
    "failed": "#e03131",
    "cancelled": "#868e96",
    "running": "#1c7ed6",
    "awaiting_input": "#f08c00",
    "awaiting_subagent": "#ae3ec9",
    "waiting": "#66d9e8",
    "accepted": "#74c0fc",
}
TOKEN_COLORS = {"input": "#1c7ed6", "output": "#2f9e44", "cache": "#adb5bd"}


@dataclass(frozen=True)
class Series:
    name: str
    color: str
    values: list[int]


def nice_max(value: float) -> int:
    """The smallest 1/2/5 x 10^n at or above `value`: gridlines land on round numbers."""
    if value <= 0:
        return 1
    magnitude = 1
    while magnitude * 10 <= value:
        magnitude *= 10
    for step in (1, 2, 5, 10):
        if step * magnitude >= value:
            return step * magnitude
    return 10 * magnitude


def short_number(value: float) -> str:
    value = int(value)
    for limit, suffix in ((1_000_000_000, "G"), (1_000_000, "M"), (1_000, "k")):
        if abs(value) >= limit:
            scaled = value / limit
            return f"{scaled:.1f}".rstrip("0").rstrip(".") + suffix
    return str(value)


def stacked_columns(labels: list[str], series: list[Series], *, title: str, height: int = 180,
                    label_every: int = 3) -> SafeString:
    """Vertical stacked bars, one column per label (e.g. one per hour)."""
    width = 720
    left, right, top, bottom = 40, 8, 10, 24
    plot_w, plot_h = width - left - right, height - top - bottom
    totals = [sum(s.values[i] for s in series) for i in range(len(labels))]
    top_value = nice_max(max(totals, default=0))
    slot = plot_w / max(len(labels), 1)
    bar_w = max(slot * 0.75, 1)
    parts = [
        f'<svg class="chart" role="img" viewBox="0 0 {width} {height}" width="100%" '
        f'preserveAspectRatio="xMidYMid meet" xmlns="http://www.w3.org/2000/svg">',
        f"<title>{escape(title)}</title>",
    ]
    for fraction in (0, 0.5, 1):
        y = top + plot_h - fraction * plot_h
        parts.append(f'<line class="grid" x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}"/>')
        parts.append(f'<text class="axis" x="{left - 4}" y="{y + 4:.1f}" text-anchor="end">'
                     f"{escape(short_number(top_value * fraction))}</text>")
    for i, label in enumerate(labels):
        x = left + i * slot + (slot - bar_w) / 2
        y = top + plot_h
        for s in series:
            value = s.values[i]
            if not value:
                continue
            h = value / top_value * plot_h
            y -= h
            parts.append(
                f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar_w:.1f}" height="{h:.1f}" fill="{escape(s.color)}">'
                f"<title>{escape(label)} {escape(s.name)}: {value}</title></rect>"
            )
        if i % label_every == 0:
            parts.append(f'<text class="axis" x="{x + bar_w / 2:.1f}" y="{height - 8}" text-anchor="middle">'
                         f"{escape(label)}</text>")
    parts.append("</svg>")
    return mark_safe("".join(parts))


def stacked_bars(rows: list[tuple[str, dict[str, int]]], segments: dict[str, str], *, title: str) -> SafeString:
    """Horizontal stacked bars, one row per label (e.g. tokens per agent: input/output/cache)."""
    width, row_h, gap = 720, 22, 8
    left, right, top = 150, 70, 4
    height = top * 2 + max(len(rows), 1) * (row_h + gap)
    plot_w = width - left - right
    top_value = max((sum(values.values()) for _, values in rows), default=0) or 1
    parts = [
        f'<svg class="chart" role="img" viewBox="0 0 {width} {height}" width="100%" '
        f'preserveAspectRatio="xMidYMid meet" xmlns="http://www.w3.org/2000/svg">',
        f"<title>{escape(title)}</title>",
    ]
    if not rows:
        parts.append(f'<text class="axis" x="{left}" y="{top + row_h - 6}">no data</text>')
    for i, (label, values) in enumerate(rows):
        y = top + i * (row_h + gap)
        shown = label if len(label) <= 22 else label[:21] + "…"
        parts.append(f'<text class="label" x="{left - 6}" y="{y + row_h - 6}" text-anchor="end">'
                     f"<title>{escape(label)}</title>{escape(shown)}</text>")
        x = float(left)
        for name, color in segments.items():
            value = values.get(name, 0)
            if not value:
                continue
            w = value / top_value * plot_w
            parts.append(
                f'<rect x="{x:.1f}" y="{y}" width="{max(w, 1):.1f}" height="{row_h}" fill="{escape(color)}">'
                f"<title>{escape(label)} {escape(name)}: {value}</title></rect>"
            )
            x += w
        total = sum(values.values())
        parts.append(f'<text class="axis" x="{x + 6:.1f}" y="{y + row_h - 6}">{escape(short_number(total))}</text>')
    parts.append("</svg>")
    return mark_safe("".join(parts))


def split_bar(parts: list[tuple[str, str, int, str]], total: int, *, title: str, width: int = 720,
              height: int = 16) -> SafeString:
    """One horizontal bar cut into (key, label, value, colour) parts: where a request's time went."""
    parts_svg = []
    x = 0.0
    whole = max(total, sum(p[2] for p in parts), 1)
    for key, label, value, color in parts:
        w = value / whole * width
        parts_svg.append(
            f'<rect class="part-{escape(key)}" x="{x:.2f}" y="0" width="{max(w, 0.5):.2f}" height="{height}" '
            f'fill="{escape(color)}"><title>{escape(label)}: {escape(duration_text(value))}</title></rect>'
        )
        x += w
    if not parts:
        parts_svg.append(f'<rect x="0" y="0" width="{width}" height="{height}" fill="#e9ecef"/>')
    return mark_safe(
        f'<svg class="split" role="img" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
        f'preserveAspectRatio="none" xmlns="http://www.w3.org/2000/svg"><title>{escape(title)}</title>'
        + "".join(parts_svg) + "</svg>"
    )


@dataclass(frozen=True)
class TimelineBar:
    label: str
    start: float | None  # seconds from the timeline's start; None: never started
    end: float | None
    color: str
    title: str
    href: str = ""


def axis_step(span: float) -> float:
    """A round tick interval giving 4-10 ticks over `span` seconds."""
    for step in (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200,
                 14400, 21600, 43200, 86400):
        if span / step <= 10:
            return step
    return 86400 * max(1, int(span / 86400 / 10) + 1)


def axis_label(seconds: float) -> str:
    if seconds < 1 and seconds:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:g} s"
    if seconds < 3600:
        return f"{seconds / 60:g} min"
    return f"{seconds / 3600:g} h"


def timeline(bars: list[TimelineBar], span: float, *, title: str) -> SafeString:
    """A Gantt chart: one row per bar on a shared time axis (0 .. `span` seconds); a bar with
    an `href` is a link (to a task's trace)."""
    width, row_h, gap = 960, 20, 8
    left, right, top, bottom = 150, 16, 6, 22
    plot_w = width - left - right
    height = top + bottom + max(len(bars), 1) * (row_h + gap)
    span = max(span, 0.001)
    parts = [
        f'<svg class="chart timeline" role="img" viewBox="0 0 {width} {height}" width="100%" '
        f'preserveAspectRatio="xMinYMin meet" xmlns="http://www.w3.org/2000/svg">',
        f"<title>{escape(title)}</title>",
    ]
    step = axis_step(span)
    tick = 0.0
    while tick <= span + 1e-9:
        x = left + tick / span * plot_w
        parts.append(f'<line class="grid" x1="{x:.1f}" x2="{x:.1f}" y1="{top}" y2="{height - bottom}"/>')
        parts.append(f'<text class="axis" x="{x:.1f}" y="{height - 6}" text-anchor="middle">'
                     f"{escape(axis_label(round(tick, 6)))}</text>")
        tick += step
    for i, bar in enumerate(bars):
        y = top + i * (row_h + gap)
        shown = bar.label if len(bar.label) <= 22 else bar.label[:21] + "…"
        parts.append(f'<text class="label" x="{left - 8}" y="{y + row_h - 6}" text-anchor="end">'
                     f"<title>{escape(bar.label)}</title>{escape(shown)}</text>")
        if bar.start is None:
            parts.append(f'<rect class="bar not-started" x="{left}" y="{y}" width="{plot_w}" height="{row_h}" '
                         f'fill="none" stroke="{escape(bar.color)}" stroke-dasharray="4 3">'
                         f"<title>{escape(bar.title)}</title></rect>")
            parts.append(f'<text class="axis" x="{left + 8}" y="{y + row_h - 6}">not started</text>')
            continue
        x = left + max(bar.start, 0) / span * plot_w
        w = max((min(bar.end if bar.end is not None else span, span) - max(bar.start, 0)) / span * plot_w, 2)
        rect = (f'<rect class="bar" x="{x:.1f}" y="{y}" width="{w:.1f}" height="{row_h}" rx="3" '
                f'fill="{escape(bar.color)}"><title>{escape(bar.title)}</title></rect>')
        if bar.href:
            rect = f'<a class="task-link" href="{escape(bar.href)}">{rect}</a>'
        parts.append(rect)
    parts.append("</svg>")
    return mark_safe("".join(parts))
