"""Structured output: schema normalisation, validation, and the loop's final `structured` step."""

from __future__ import annotations

import asyncio

import pytest
from pydantic import BaseModel

from mash_core.agent import Agent, AgentHooks, STRUCTURED_OUTPUT_INSTRUCTION
from mash_core.config import AgentConfig
from mash_core.errors import ConfigError
from mash_core.llm.scripted import ScriptedProvider
from mash_core.structured import StructuredOutputError, normalize_schema, parse_json_object, validate_structured
from mash_core.tools.base import FunctionTool, ToolRegistry

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer"},
        "address": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
    "required": ["name", "age"],
}


def run(coro):
    return asyncio.run(coro)


class Person(BaseModel):
    name: str
    age: int


class Team(BaseModel):
    lead: Person
    size: int


# -- helpers -------------------------------------------------------------------------------


def test_it_closes_every_object_in_a_schema_without_mutating_the_input():
    schema = normalize_schema(PERSON)
    assert schema["additionalProperties"] is False
    assert schema["properties"]["address"]["additionalProperties"] is False
    assert "additionalProperties" not in PERSON  # a deep copy was closed, not the caller's dict
    assert "additionalProperties" not in PERSON["properties"]["address"]


def test_it_keeps_an_explicit_additional_properties():
    schema = normalize_schema({"type": "object", "properties": {}, "additionalProperties": {"type": "string"}})
    assert schema["additionalProperties"] == {"type": "string"}


def test_it_makes_a_closed_schema_from_a_pydantic_model():
    schema = normalize_schema(Team)
    assert schema["type"] == "object"
    assert schema["additionalProperties"] is False
    assert schema["required"] == ["lead", "size"]
    assert schema["$defs"]["Person"]["additionalProperties"] is False
    assert validate_structured(schema, {"lead": {"name": "a", "age": 1}, "size": 2})
    with pytest.raises(StructuredOutputError, match="lead"):
        validate_structured(schema, {"lead": {"name": "a", "age": 1, "extra": 1}, "size": 2})


@pytest.mark.parametrize(
    "source, message",
    [
        ({"type": "array", "items": {}}, "must describe an object"),
        ({"type": "object", "properties": {"a": {"type": "nonsense"}}}, "not a valid JSON schema"),
        ("a string", "JSON schema object or a pydantic model class"),
        (Person(name="x", age=1), "JSON schema object or a pydantic model class"),  # an instance, not the class
    ],
)
def test_it_rejects_bad_schemas_with_config_error(source, message):
    with pytest.raises(ConfigError, match=message):
        normalize_schema(source)


def test_it_parses_json_objects_in_plain_fenced_or_surrounded_text():
    assert parse_json_object('{"a": 1}') == {"a": 1}
    assert parse_json_object('```json\n{"a": 2}\n```') == {"a": 2}
    assert parse_json_object('Here you go: {"a": 3} hope that helps') == {"a": 3}
    for bad in ["not json", "[1, 2]", "{broken"]:
        with pytest.raises(StructuredOutputError):
            parse_json_object(bad)


def test_it_names_the_failing_path_in_a_validation_error():
    schema = normalize_schema(PERSON)
    with pytest.raises(StructuredOutputError, match="at age") as info:
        validate_structured(schema, {"name": "a", "age": "old"})
    assert info.value.code == "INVALID_STRUCTURED_OUTPUT"
    with pytest.raises(StructuredOutputError, match=r"\(root\)"):
        validate_structured(schema, {"name": "a"})


# -- through the agent loop ----------------------------------------------------------------


def test_it_returns_structured_output_from_a_final_structured_call():
    provider = ScriptedProvider(["Ada is 36."], structured={"name": "Ada", "age": 36})
    agent = Agent(AgentConfig(app_id="s"), provider)

    result = run(agent.run("Who?", structured_output=PERSON))

    assert result.structured_output == {"name": "Ada", "age": 36}
    assert result.text == "Ada is 36."
    assert result.llm_calls == 2
    assert result.steps == 1
    assert result.usage.input_tokens == 20

    plain, structured = provider.calls
    assert plain.output_schema is None
    assert structured.output_schema is not None
    assert structured.output_schema["additionalProperties"] is False
    assert structured.output_schema["properties"]["address"]["additionalProperties"] is False
    assert structured.output_schema["required"] == ["name", "age"]
    # The structured request carries the whole conversation plus the instruction.
    assert [m.role for m in structured.messages] == ["user", "assistant", "user"]
    assert structured.messages[-1].text == STRUCTURED_OUTPUT_INSTRUCTION
    assert structured.messages[1].text == "Ada is 36."


def test_it_runs_the_structured_step_through_the_hooks():
    keys: list[str] = []

    class Hooks(AgentHooks):
        async def run_step(self, key, kind, fn):
            keys.append(key)
            return await fn()

    def lookup(name: str) -> str:
        return "36"

    provider = ScriptedProvider([{"tool": "lookup", "arguments": {"name": "Ada"}}, "36"],
                                structured={"name": "Ada", "age": 36})
    agent = Agent(AgentConfig(app_id="s"), provider, ToolRegistry([FunctionTool(lookup)]))
    result = run(agent.run("age?", structured_output=PERSON, hooks=Hooks()))
    assert keys == ["plan.0", "tool.0.0", "plan.1", "structured"]
    assert result.structured_output["age"] == 36


def test_it_raises_when_the_structured_answer_does_not_match_the_schema():
    provider = ScriptedProvider(["hm"], structured={"name": "Ada", "age": "thirty-six"})
    agent = Agent(AgentConfig(app_id="s"), provider)
    with pytest.raises(StructuredOutputError) as info:
        run(agent.run("Who?", structured_output=PERSON))
    assert info.value.code == "INVALID_STRUCTURED_OUTPUT"


def test_it_raises_when_the_structured_answer_has_unknown_keys():
    provider = ScriptedProvider(["hm"], structured={"name": "Ada", "age": 36, "extra": True})
    with pytest.raises(StructuredOutputError, match="extra"):
        run(Agent(AgentConfig(app_id="s"), provider).run("Who?", structured_output=PERSON))


def test_it_raises_when_the_structured_answer_is_not_json():
    provider = ScriptedProvider(["hm"], structured="sorry, I cannot")
    with pytest.raises(StructuredOutputError, match="not JSON"):
        run(Agent(AgentConfig(app_id="s"), provider).run("Who?", structured_output=PERSON))


def test_it_accepts_a_pydantic_model_as_the_schema():
    provider = ScriptedProvider(["ok"], structured=lambda request: {"name": "Bo", "age": len(request.messages)})
    result = run(Agent(AgentConfig(app_id="s"), provider).run("Who?", structured_output=Person))
    assert result.structured_output == {"name": "Bo", "age": 3}
    assert Person.model_validate(result.structured_output).name == "Bo"
    schema = provider.calls[1].output_schema
    assert schema["additionalProperties"] is False
    assert set(schema["properties"]) == {"name", "age"}


def test_it_falls_back_to_the_last_answer_when_no_structured_object_is_scripted():
    provider = ScriptedProvider(['{"name": "Cy", "age": 5}'])
    result = run(Agent(AgentConfig(app_id="s"), provider).run("Who?", structured_output=PERSON))
    assert result.structured_output == {"name": "Cy", "age": 5}


def test_it_rejects_a_bad_schema_before_calling_the_model():
    provider = ScriptedProvider(["x"])
    with pytest.raises(ConfigError):
        run(Agent(AgentConfig(app_id="s"), provider).run("Who?", structured_output={"type": "string"}))
    assert provider.calls == []
