"""What a stored value may hold, checked in one place that every write path goes through.

No database of ours stores a NUL in text or jsonb (PostgreSQL refuses both), UTF-8 cannot
encode a lone surrogate (JSON's `"\\ud800"` decodes to one, and SQLite then keeps it
escaped, so every later read of the row fails to encode), and neither JSON nor jsonb has
NaN or infinities (`1e400` parses as one). Depth is bounded so that no stored value is too
deep for a later `json.dumps` or parse.

`check_storable` is the check: the API's serializers and services call it on client input
(422 with a path to the bad value), models call it from `clean()` (the admin's forms), and
`StorableJSONField` calls it on every save (code sync, the engine, anything else). A field
holding what a model or a tool produced (`untrusted=True`) repairs the value instead of
refusing it: a tool that printed a NUL byte must not fail the run that stores its output.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from django.core.exceptions import ValidationError
from django import forms
from django.db import models

MAX_DEPTH = 64
STORED_MAX_DEPTH = 500
REPLACEMENT = "\ufffd"
_UNSTORABLE = re.compile(r"[\x00\ud800-\udfff]")
# json.dumps(ensure_ascii=False) writes a NUL as this escape and a lone surrogate as itself.
_UNSTORABLE_DUMPED = re.compile(r"\\u0000|[\ud800-\udfff]")


class UnstorableValue(ValueError):
    def __init__(self, where: str, reason: str):
        super().__init__(f"{where}: {reason}")
        self.where = where
        self.reason = reason


def _join(where: str, key: Any) -> str:
    return f"{where}[{key}]" if isinstance(key, int) else f"{where}.{key}"


def check_storable(value: Any, where: str = "value", *, max_depth: int = MAX_DEPTH) -> None:
    """Raise UnstorableValue naming the first part of `value` no column can store."""
    stack: list[tuple[Any, str, int]] = [(value, where, 0)]
    while stack:
        item, path, depth = stack.pop()
        if isinstance(item, str):
            if (match := _UNSTORABLE.search(item)) is not None:
                what = "NUL characters" if match.group() == "\x00" else "lone surrogate characters"
                raise UnstorableValue(path, f"must not contain {what}")
        elif isinstance(item, bool) or item is None or isinstance(item, int):
            continue
        elif isinstance(item, float):
            if not math.isfinite(item):
                raise UnstorableValue(path, "numbers must be finite (JSON has no NaN or Infinity)")
        elif isinstance(item, (dict, list, tuple)):
            if depth >= max_depth:
                raise UnstorableValue(path, f"nested deeper than {max_depth} levels")
            if isinstance(item, dict):
                for key, inner in item.items():
                    if not isinstance(key, str):
                        raise UnstorableValue(path, "object keys must be strings")
                    if _UNSTORABLE.search(key):
                        raise UnstorableValue(path, "keys must not contain NUL or lone surrogate characters")
                    stack.append((inner, _join(path, key), depth + 1))
            else:
                stack.extend((inner, _join(path, index), depth + 1) for index, inner in enumerate(item))
        else:
            raise UnstorableValue(path, f"{type(item).__name__} is not a JSON value")


def is_storable(value: Any) -> bool:
    try:
        check_storable(value)
    except UnstorableValue:
        return False
    return True


def repaired(value: Any, depth: int = 0) -> Any:
    """`value` with what no column stores replaced: NUL and lone surrogates by U+FFFD,
    NaN and infinities by None, anything deeper than MAX_DEPTH by its JSON text."""
    if isinstance(value, str):
        return _UNSTORABLE.sub(REPLACEMENT, value)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (dict, list, tuple)) and depth >= MAX_DEPTH:
        return repaired(json.dumps(value, default=str, allow_nan=True, ensure_ascii=True))
    if isinstance(value, dict):
        return {repaired(str(k)): repaired(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [repaired(v, depth + 1) for v in value]
    return value


def validate_storable(value: Any) -> None:
    """Django validator form of `check_storable` (model forms, `full_clean`)."""
    try:
        check_storable(value)
    except UnstorableValue as exc:
        raise ValidationError(str(exc), code="unstorable") from None


def _dumps_clean(value: Any) -> bool:
    """The fast pass on every save: one dumps and one scan instead of a walk per value.
    A false alarm (a stored backslash before 'u0000') only costs the exact walk."""
    if value is None or isinstance(value, (bool, int)):
        return True
    try:
        text = json.dumps(value, ensure_ascii=False, allow_nan=False)
    except (ValueError, TypeError, RecursionError):
        return False
    return _UNSTORABLE_DUMPED.search(text) is None


class StorableJSONFormField(forms.JSONField):
    """The admin's JSON box: refuses what the column cannot store, and can show it back.
    (Django's field re-renders the posted value unescaped, and a lone surrogate in it
    would make the error page itself fail to encode.)"""

    def to_python(self, value):
        parsed = super().to_python(value)
        validate_storable(parsed)
        return parsed

    def prepare_value(self, value):
        text = super().prepare_value(value)
        if isinstance(text, str) and _UNSTORABLE.search(text) is not None:
            return json.dumps(value, ensure_ascii=True, cls=self.encoder)  # shown back as it was typed: escaped
        return text


class StorableJSONField(models.JSONField):
    """A JSONField that never writes what a later read cannot load (see the module doc).

    `untrusted=True` for columns holding model or tool output: such a value is repaired,
    not refused. Stored exactly like `models.JSONField` (`deconstruct` says so): the check
    is behaviour, not schema, and needs no migration.
    """

    default_validators = [validate_storable]

    def __init__(self, *args, untrusted: bool = False, **kwargs):
        self.untrusted = untrusted
        super().__init__(*args, **kwargs)

    def deconstruct(self):
        name, _path, args, kwargs = super().deconstruct()
        return name, "django.db.models.JSONField", args, kwargs

    def formfield(self, **kwargs):
        return super().formfield(**{"form_class": StorableJSONFormField, **kwargs})

    def get_prep_value(self, value):
        if not _dumps_clean(value):
            if self.untrusted:
                value = repaired(value)
            else:
                # Depth is the API's limit on client input; what the host's own code stores
                # need only stay within what json can read back.
                check_storable(value, self.name, max_depth=STORED_MAX_DEPTH)
        return super().get_prep_value(value)
