"""The normalized LLM contract and its providers."""

from mash_core.llm.anthropic import AnthropicProvider
from mash_core.llm.base import (
    LLMError,
    LLMNotConfiguredError,
    LLMProvider,
    LLMRequest,
    LLMResponse,
    StopReason,
    TokenUsage,
    ToolDefinition,
)
from mash_core.llm.scripted import ScriptedProvider, ScriptedTurn

__all__ = [
    "AnthropicProvider",
    "ScriptedProvider",
    "ScriptedTurn",
    "LLMProvider",
    "LLMRequest",
    "LLMResponse",
    "LLMError",
    "LLMNotConfiguredError",
    "StopReason",
    "TokenUsage",
    "ToolDefinition",
]
