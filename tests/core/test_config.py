"""`AgentConfig`: defaults and validation messages (no Django)."""

from __future__ import annotations

import pytest

from mash_core.config import AgentConfig, validate_agent_id
from mash_core.errors import ConfigError


def test_it_has_the_documented_defaults():
    config = AgentConfig(app_id="helper")
    assert config.max_steps == 30
    assert config.max_tokens == 4096
    assert config.temperature == 1.0
    assert config.prompt_caching_enabled is True
    assert config.skills_enabled is True
    assert config.conversation_history_turns == 3
    assert config.compaction_token_threshold == 0
    assert config.compaction_turn_limit == 50
    assert config.system_prompt == "You are a helpful assistant."
    assert config.extra == {}


def test_it_serialises_its_settings():
    assert AgentConfig(app_id="helper", max_steps=5).to_dict() == {
        "app_id": "helper",
        "max_steps": 5,
        "max_tokens": 4096,
        "temperature": 1.0,
        "skills_enabled": True,
        "prompt_caching_enabled": True,
        "conversation_history_turns": 3,
        "compaction_token_threshold": 0,
        "compaction_turn_limit": 50,
    }


def test_it_does_not_share_the_extra_dict_between_configs():
    a, b = AgentConfig(app_id="a"), AgentConfig(app_id="b")
    a.extra["x"] = 1
    assert b.extra == {}


@pytest.mark.parametrize("app_id", ["", "has space", "-starts-with-dash", "a" * 65, "slash/no", None, 42])
def test_it_rejects_a_bad_app_id(app_id):
    with pytest.raises(ConfigError, match=r"app_id .* is invalid: use 1-64 letters"):
        AgentConfig(app_id=app_id)


@pytest.mark.parametrize("app_id", ["a", "Agent_1", "my.agent-2", "x" * 64])
def test_it_accepts_good_app_ids(app_id):
    assert AgentConfig(app_id=app_id).app_id == app_id
    assert validate_agent_id(app_id) == app_id


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("max_steps", 0, "AgentConfig.max_steps must be between 1 and 1000, got 0"),
        ("max_steps", 1001, "AgentConfig.max_steps must be between 1 and 1000, got 1001"),
        ("max_steps", "10", "AgentConfig.max_steps must be an integer, got '10'"),
        ("max_steps", True, "AgentConfig.max_steps must be an integer, got True"),
        ("max_steps", 2.5, "AgentConfig.max_steps must be an integer, got 2.5"),
        ("max_tokens", 0, "AgentConfig.max_tokens must be between 1 and 1000000, got 0"),
        ("conversation_history_turns", -1, "AgentConfig.conversation_history_turns must be between 0 and 1000"),
        ("compaction_token_threshold", -5, "AgentConfig.compaction_token_threshold must be >= 0, got -5"),
        ("compaction_turn_limit", 0, "AgentConfig.compaction_turn_limit must be between 1 and 10000, got 0"),
        ("temperature", 5, "AgentConfig.temperature must be between 0 and 2, got 5"),
        ("temperature", -0.1, "AgentConfig.temperature must be between 0 and 2, got -0.1"),
        ("temperature", "hot", "AgentConfig.temperature must be a number, got 'hot'"),
        ("temperature", True, "AgentConfig.temperature must be a number, got True"),
        ("extra", [], "AgentConfig.extra must be a dict"),
    ],
)
def test_it_rejects_bad_values_with_a_clear_message(field, value, message):
    with pytest.raises(ConfigError) as info:
        AgentConfig(app_id="a", **{field: value})
    assert message in str(info.value)


def test_it_accepts_boundary_values():
    config = AgentConfig(app_id="a", max_steps=1, temperature=0, conversation_history_turns=0)
    assert (config.max_steps, config.temperature) == (1, 0)
    assert AgentConfig(app_id="a", temperature=2.0).temperature == 2.0


@pytest.mark.parametrize(
    "prompt",
    [None, 42, ["plain string in a list"], [{"type": "image", "text": "x"}], [{"type": "text", "text": 3}]],
)
def test_it_rejects_a_system_prompt_of_the_wrong_type(prompt):
    with pytest.raises(ConfigError, match="system_prompt must be a string or a list of"):
        AgentConfig(app_id="a", system_prompt=prompt)


def test_it_accepts_a_system_prompt_as_text_blocks():
    blocks = [{"type": "text", "text": "You are terse."}, {"text": "Answer in English."}]
    config = AgentConfig(app_id="a", system_prompt=blocks)
    assert config.system_prompt_text == "You are terse.\n\nAnswer in English."
    assert AgentConfig(app_id="a", system_prompt="Hi").system_prompt_text == "Hi"


def test_it_raises_a_config_error_that_is_also_a_value_error():
    with pytest.raises(ValueError):
        AgentConfig(app_id="")
