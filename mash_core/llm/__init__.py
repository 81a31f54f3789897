"""The normalized LLM contract and its providers."""

from __future__ import annotations

import os
from typing import Callable

from mash_core.errors import ConfigError
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
from mash_core.llm.gemini import GeminiProvider
from mash_core.llm.openai import OpenAIProvider
from mash_core.llm.openai_chat import OpenAIChatProvider
from mash_core.llm.scripted import ScriptedProvider, ScriptedTurn
from mash_core.secrets import read_secret

# These three import their SDK at the first call, not here: each SDK costs a worker process
# tens of MiB, and a process pays only for the one it calls.


def __getattr__(name: str):
    # The anthropic SDK takes about a second to import; load it only when a host asks for it,
    # so CLI commands and processes that never call Claude start fast.
    if name == "AnthropicProvider":
        from mash_core.llm.anthropic import AnthropicProvider

        return AnthropicProvider
    raise AttributeError(f"module 'mash_core.llm' has no attribute {name!r}")


#: The values MASH_LLM takes.
PROVIDER_CHOICES = ("anthropic", "openai", "openai-chat", "gemini", "scripted")

# Without MASH_LLM: the first provider whose variable (or its _FILE) is set, in this order.
_DETECT = (
    ("anthropic", ("ANTHROPIC_API_KEY",)),
    ("openai", ("OPENAI_API_KEY",)),
    ("gemini", ("GEMINI_API_KEY", "GOOGLE_API_KEY")),
    ("openai-chat", ("OPENAI_CHAT_BASE_URL",)),
)


def chosen_provider(*, scripted: bool = False) -> str:
    """Which provider the environment asks for: MASH_LLM if set (`scripted` only counts when
    the caller has a scripted model), else the first of ANTHROPIC_API_KEY, OPENAI_API_KEY,
    GEMINI_API_KEY / GOOGLE_API_KEY (each set directly or as a _FILE) and OPENAI_CHAT_BASE_URL
    (a local OpenAI-compatible server) that is set, else anthropic (whose first call then
    fails with LLM_NOT_CONFIGURED, naming the variable to set)."""
    forced = os.environ.get("MASH_LLM", "").strip().lower()
    if forced and forced not in PROVIDER_CHOICES:
        raise ConfigError(f"MASH_LLM={forced!r} is not a provider: use one of {', '.join(PROVIDER_CHOICES)}")
    if forced and (forced != "scripted" or scripted):
        return forced
    for name, variables in _DETECT:
        for variable in variables:
            try:
                if read_secret(variable):
                    return name
            except ConfigError:
                return name  # misconfigured, yet meant: the provider's first call reports it
    return "anthropic"


def provider_from_env(app_id: str, *, model: str | None = None,
                      scripted: Callable[[], LLMProvider] | None = None) -> LLMProvider:
    """The provider `chosen_provider` names, built for `app_id` (and `model`, when given; else
    each provider's own model variable). `scripted()` builds the scripted one (MASH_LLM=scripted);
    a caller without one gets the provider the keys choose."""
    choice = chosen_provider(scripted=scripted is not None)
    if choice == "scripted":
        assert scripted is not None
        return scripted()
    if choice == "openai":
        return OpenAIProvider(app_id, model=model)
    if choice == "openai-chat":
        return OpenAIChatProvider(app_id, model=model)
    if choice == "gemini":
        return GeminiProvider(app_id, model=model)
    from mash_core.llm.anthropic import AnthropicProvider

    return AnthropicProvider(app_id=app_id, model=model)


__all__ = [
    "AnthropicProvider",
    "OpenAIProvider",
    "OpenAIChatProvider",
    "GeminiProvider",
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
    "PROVIDER_CHOICES",
    "chosen_provider",
    "provider_from_env",
]
