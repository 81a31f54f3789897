"""Template filters of the telemetry pages.

Everything these receive may come from a model, a tool or an API client. Only
`markdown` returns markup, and only after nh3 has sanitized it.
"""

from __future__ import annotations

import json
from functools import lru_cache

import nh3
from django import template
from django.utils.html import escape
from django.utils.safestring import mark_safe

from mash_runtime.presentation import clock
from mash_runtime.presentation.formats import duration_text, pretty
from mash_telemetry.page_data import highlight_spans

register = template.Library()

# No <img>: a picture in a model's answer could call an outside server when an operator looks at it.
MARKDOWN_TAGS = {
    "p", "br", "hr", "h1", "h2", "h3", "h4", "h5", "h6", "strong", "em", "del", "code", "pre", "blockquote",
    "ul", "ol", "li", "a", "table", "thead", "tbody", "tr", "th", "td",
}


@lru_cache(maxsize=1)
def _markdown():
    from markdown_it import MarkdownIt

    # Raw HTML in the source is shown as text, and nh3 cleans whatever the renderer produced.
    return MarkdownIt("commonmark", {"html": False}).enable(["table", "strikethrough"])


@register.filter
def markdown(text) -> str:
    html = _markdown().render(str(text or ""))
    return mark_safe(nh3.clean(html, tags=MARKDOWN_TAGS, attributes={"a": {"href", "title"}},
                               url_schemes={"http", "https", "mailto"}, link_rel="noopener noreferrer nofollow"))


@register.filter
def ms(value) -> str:
    return duration_text(value)


@register.filter
def num(value) -> str:
    try:
        return f"{int(value):,}"
    except (TypeError, ValueError):
        return "–"


@register.filter
def when(value):
    """A timestamp by the one rule of these pages (see `mash_runtime.presentation.clock`)."""
    return clock.when(value)


@register.simple_tag
def zone_label() -> str:
    """The server's time zone as the pages label their times (`UTC`, `EST`)."""
    from django.utils import timezone

    return clock.zone_label(timezone.localtime())


@register.simple_tag
def zone_attrs() -> str:
    """`data-zone` and `data-zone-labels` attributes for the scripts that format times."""
    attrs = clock.zone_attrs()
    return mark_safe(f'data-zone="{escape(attrs["zone"])}" data-zone-labels="{escape(attrs["labels"])}"')


@register.filter
def highlight(text, terms) -> str:
    """`text` with the words of `terms` marked. The text is untrusted: matches are found on
    the raw text and every piece, matched or not, is escaped before the <mark> tags go in."""
    pieces = []
    for piece, matched in highlight_spans(str(text or ""), terms or ()):
        pieces.append(f"<mark>{escape(piece)}</mark>" if matched else escape(piece))
    return mark_safe("".join(pieces))


@register.filter
def run_duration(run):
    return run.elapsed_ms()


@register.filter
def admin_pk(value) -> str:
    """A primary key as the admin's URLs spell it (`:` and `/` escaped)."""
    from django.contrib.admin.utils import quote

    return quote(value)


@register.filter
def pretty_json(value) -> str:
    return pretty(value)


@register.filter
def compact_json(value) -> str:
    """One line, as the live tail's script prints payloads."""
    try:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)
    except (TypeError, ValueError):
        return str(value)


@register.filter
def short_id(value) -> str:
    text = str(value or "")
    return text[:8]


@register.filter
def clip(value, limit=120) -> str:
    text = " ".join(str(value or "").split())
    limit = int(limit)
    return text if len(text) <= limit else text[: limit - 1] + "…"


@register.filter
def words(value) -> str:
    """`awaiting_input` -> `awaiting input`."""
    return str(value or "").replace("_", " ")


@register.filter
def family(event_type) -> str:
    """`runtime.tool.call.completed` -> `runtime` (the live tail colours rows by it)."""
    return str(event_type or "").split(".", 1)[0]
