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
