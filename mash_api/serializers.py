"""Request-body shapes. Strict: a number is not a string, a list is not an object."""

import json

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


class SubmitRequestSerializer(serializers.Serializer):
    message = StrictCharField(max_length=200_000)
    session_id = StrictCharField(required=False, allow_null=True, allow_blank=True, max_length=200)
    structured_output = JSONObjectField(required=False, allow_null=True)
    metadata = JSONObjectField(required=False, allow_null=True)


class InteractionAnswerSerializer(serializers.Serializer):
    interaction_id = StrictCharField(max_length=64)
    response = StorableJSONField()


class SubmitAcceptedSerializer(serializers.Serializer):
    request_id = serializers.UUIDField()
    agent_id = serializers.CharField()
    session_id = serializers.CharField()
    status = serializers.CharField()
