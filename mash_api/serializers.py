"""Request-body and query shapes. Strict: a number is not a string, a list is not an object.

These are where a request's input is checked, once: the views hand services typed values.
"""

import json
from datetime import datetime
from datetime import timezone as dt_timezone

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from mash_runtime.storable import UnstorableValue, check_storable


class StrictCharField(serializers.CharField):
    def to_internal_value(self, data):
        if not isinstance(data, str):
            self.fail("invalid")
        return super().to_internal_value(data)


class StorableJSONField(serializers.JSONField):
    """Any JSON value a column can store (`mash_runtime.storable`: no NUL or lone surrogate,
    finite numbers, bounded depth), at most `max_bytes` of JSON."""

    def __init__(self, *args, max_bytes: int = 64 * 1024, **kwargs):
        self.max_bytes = max_bytes
        super().__init__(*args, **kwargs)

    def to_internal_value(self, data):
        value = super().to_internal_value(data)
        try:
            check_storable(value, "value")
        except UnstorableValue as exc:
            raise serializers.ValidationError(str(exc), code="unstorable") from None
        if len(json.dumps(value, ensure_ascii=False).encode()) > self.max_bytes:
            raise serializers.ValidationError(f"must be at most {self.max_bytes} bytes of JSON", code="too_large")
        return value


class JSONObjectField(StorableJSONField):
    default_error_messages = {"not_object": "Must be a JSON object."}

    def to_internal_value(self, data):
        value = super().to_internal_value(data)
        if value is not None and not isinstance(value, dict):
            self.fail("not_object")
        return value


class QueryValueField(serializers.Field):
    """A query-string value: absent or blank is the default, else `parse(text)`; a complaint is
    `{msg, type}` under `loc: ["query", name]` (views.base.validated_query)."""

    def __init__(self, *, default=None, **kwargs):
        super().__init__(required=False, default=default, **kwargs)

    def to_internal_value(self, data):
        if data in (None, ""):
            return self.default
        return self.parse(str(data))

    def parse(self, text: str):
        raise NotImplementedError

    def to_representation(self, value):
        return value


@extend_schema_field(OpenApiTypes.INT)
class LimitField(QueryValueField):
    """`?limit=`: 1..maximum (a `(default, maximum)` pair of the service it feeds)."""

    def __init__(self, *, default: int, maximum: int, **kwargs):
        self.maximum = maximum
        super().__init__(default=default, **kwargs)

    def parse(self, text):
        try:
            limit = int(text.strip())
        except ValueError:
            raise serializers.ValidationError("not an integer", code="int_parsing") from None
        if not 1 <= limit <= self.maximum:
            raise serializers.ValidationError(f"must be between 1 and {self.maximum}", code="value_error")
        return limit


@extend_schema_field(OpenApiTypes.INT)
class OffsetField(QueryValueField):
    """`?offset=`: rows to skip, a non-negative integer (0 when absent)."""

    def __init__(self, **kwargs):
        super().__init__(default=0, **kwargs)

    def parse(self, text):
        try:
            skip = int(text)
        except ValueError:
            skip = -1
        if skip < 0:
            raise serializers.ValidationError("invalid", code="int_parsing")
        return skip


@extend_schema_field(OpenApiTypes.NUMBER)
class EpochField(QueryValueField):
    """A time as epoch seconds, an aware datetime (None when absent)."""

    def parse(self, text):
        try:
            return datetime.fromtimestamp(float(text), tz=dt_timezone.utc)
        except (ValueError, OverflowError, OSError):
            raise serializers.ValidationError("not a number", code="float_parsing") from None


@extend_schema_field(OpenApiTypes.BOOL)
class FlagField(QueryValueField):
    """A yes/no query value: anything but `false`, `0` or `no` is yes."""

    def parse(self, text):
        return text.lower() not in ("false", "0", "no")


class CursorField(serializers.Field):
    """An id or seq to resume after (`?after=`): a non-negative integer."""

    def to_internal_value(self, data):
        try:
            value = int(str(data).strip())
        except ValueError:
            raise serializers.ValidationError("not an integer", code="int_parsing") from None
        if value < 0:
            raise serializers.ValidationError("must be a non-negative integer", code="value_error")
        return value

    def to_representation(self, value):
        return value


# A submit's body, the one check of it (/api/v1, /h2a/ and the MCP endpoint): `message` and
# `session_id` come out stripped, a blank `session_id` as None (the agent's default session).
# What the schema means is the service's (INVALID_STRUCTURED_OUTPUT). A comment, not a
# docstring: drf-spectacular would publish that in the schema.
class SubmitRequestSerializer(serializers.Serializer):
    message = StrictCharField(max_length=200_000)
    session_id = StrictCharField(required=False, allow_null=True, allow_blank=True, max_length=200)
    structured_output = JSONObjectField(required=False, allow_null=True)
    metadata = JSONObjectField(required=False, allow_null=True)

    def validate_session_id(self, value):
        return value or None


class InteractionAnswerSerializer(serializers.Serializer):
    interaction_id = StrictCharField(max_length=64)
    response = StorableJSONField()


class SubmitAcceptedSerializer(serializers.Serializer):
    request_id = serializers.UUIDField()
    agent_id = serializers.CharField()
    session_id = serializers.CharField()
    status = serializers.CharField()
