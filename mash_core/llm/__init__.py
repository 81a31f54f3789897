"""The normalized LLM contract and its providers."""

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


def __getattr__(name: str):
    # The anthropic SDK takes about a second to import; load it only when a host asks for it,
    # so CLI commands and processes that never call Claude start fast.
    if name == "AnthropicProvider":
        from mash_core.llm.anthropic import AnthropicProvider

        return AnthropicProvider
    raise AttributeError(f"module 'mash_core.llm' has no attribute {name!r}")

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
