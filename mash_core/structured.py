"""Structured-output helpers: schemas from dicts or pydantic models, closed objects, validation."""

from __future__ import annotations

import copy
import json
import re
from typing import Any

import jsonschema

from mash_core.errors import ConfigError, MashError


class StructuredOutputError(MashError):
    """The model's structured answer is not a JSON object valid against the schema."""

    code = "INVALID_STRUCTURED_OUTPUT"


def _close_objects(schema: Any) -> Any:
    """Forbid unknown keys on every object that does not say otherwise (providers require closed objects)."""
    if isinstance(schema, dict):
        out = {k: _close_objects(v) for k, v in schema.items()}
        if out.get("type") == "object" or "properties" in out:
            out.setdefault("additionalProperties", False)
        return out
    if isinstance(schema, list):
        return [_close_objects(v) for v in schema]
    return schema


def normalize_schema(source: Any) -> dict[str, Any]:
    """A closed JSON schema for a dict schema or a pydantic model class; ConfigError when invalid."""
    if isinstance(source, type) and hasattr(source, "model_json_schema"):
        schema = source.model_json_schema()
    elif isinstance(source, dict):
        schema = copy.deepcopy(source)
    else:
        raise ConfigError("structured_output must be a JSON schema object or a pydantic model class")
    if schema.get("type") != "object":
        raise ConfigError("structured_output schema must describe an object (\"type\": \"object\")")
    try:
        jsonschema.Draft202012Validator.check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise ConfigError(f"structured_output is not a valid JSON schema: {exc.message}") from exc
    return _close_objects(schema)


_FENCE_RE = re.compile(r"^```(?:json)?\s*(.*?)\s*```$", re.DOTALL)


def parse_json_object(text: str) -> dict[str, Any]:
    candidate = text.strip()
    fenced = _FENCE_RE.match(candidate)
    if fenced:
        candidate = fenced.group(1)
    try:
        value = json.loads(candidate)
    except json.JSONDecodeError:
        start, end = candidate.find("{"), candidate.rfind("}")
        if start == -1 or end <= start:
            raise StructuredOutputError("structured output is not JSON") from None
        try:
            value = json.loads(candidate[start : end + 1])
        except json.JSONDecodeError as exc:
            raise StructuredOutputError(f"structured output is not JSON: {exc.msg}") from None
    if not isinstance(value, dict):
        raise StructuredOutputError("structured output must be a JSON object")
    return value


def validate_structured(schema: dict[str, Any], value: Any) -> dict[str, Any]:
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(value), key=lambda e: list(e.absolute_path))
    if errors:
        first = errors[0]
        where = "/".join(str(p) for p in first.absolute_path) or "(root)"
        raise StructuredOutputError(f"structured output does not match the schema at {where}: {first.message}")
    return value
