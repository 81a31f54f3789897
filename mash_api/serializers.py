"""Request-body shapes. Strict: a number is not a string, a list is not an object."""

from rest_framework import serializers

from mash_api.errors import contains_unstorable


class StrictCharField(serializers.CharField):
    def to_internal_value(self, data):
        if not isinstance(data, str):
            self.fail("invalid")
        return super().to_internal_value(data)


class StorableJSONField(serializers.JSONField):
    """Any JSON value without NUL or lone surrogate characters (no database column stores them)."""

    default_error_messages = {"invalid_characters": "NUL and surrogate characters are not allowed."}

    def to_internal_value(self, data):
        value = super().to_internal_value(data)
        if contains_unstorable(value):
            self.fail("invalid_characters")
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
