"""The normalized LLM contract every provider speaks.

Providers translate `LLMRequest` into their wire format and their answer back into
`LLMResponse`; the agent loop never sees a vendor type. Both are plain dicts when
stored (`to_dict`/`from_dict`), which is how checkpoints replay an LLM call.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Literal

from mash_core.errors import MashError
from mash_core.messages import ContentBlock, HasContent, Message, block_from_dict

StopReason = Literal["end_turn", "tool_use", "max_tokens", "stop_sequence", "refusal", "other"]
STOP_REASONS: tuple[str, ...] = ("end_turn", "tool_use", "max_tokens", "stop_sequence", "refusal", "other")


@dataclass
class TokenUsage:
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0

    @property
    def total(self) -> int:
        return self.input_tokens + self.output_tokens + self.cache_read_tokens + self.cache_write_tokens

    def __add__(self, other: "TokenUsage") -> "TokenUsage":
        return TokenUsage(
            self.input_tokens + other.input_tokens,
            self.output_tokens + other.output_tokens,
            self.cache_read_tokens + other.cache_read_tokens,
            self.cache_write_tokens + other.cache_write_tokens,
        )

    def to_dict(self) -> dict[str, int]:
        return {
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cache_read_tokens": self.cache_read_tokens,
            "cache_write_tokens": self.cache_write_tokens,
            "total_tokens": self.total,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> "TokenUsage":
        data = data or {}
        return cls(
            int(data.get("input_tokens", 0)),
            int(data.get("output_tokens", 0)),
            int(data.get("cache_read_tokens", 0)),
            int(data.get("cache_write_tokens", 0)),
        )


@dataclass(frozen=True)
class ToolDefinition:
    name: str
    description: str
    parameters: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description, "parameters": self.parameters}


@dataclass
class LLMRequest:
    system: str | list[dict[str, Any]]
    messages: list[Message]
    tools: list[ToolDefinition] = field(default_factory=list)
    max_tokens: int = 4096
    temperature: float | None = None
    # A JSON schema: the provider must answer with one JSON object valid against it.
    output_schema: dict[str, Any] | None = None
    prompt_caching: bool = True
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def system_text(self) -> str:
        if isinstance(self.system, str):
            return self.system
        return "\n\n".join(str(b.get("text", "")) for b in self.system)


@dataclass
class LLMResponse(HasContent):
    content: list[ContentBlock]
    stop_reason: StopReason = "end_turn"
    usage: TokenUsage = field(default_factory=TokenUsage)
    model: str = ""

    def to_message(self) -> Message:
        return Message(role="assistant", content=list(self.content))

    def to_dict(self) -> dict[str, Any]:
        return {
            "content": [b.to_dict() for b in self.content],
            "stop_reason": self.stop_reason,
            "usage": self.usage.to_dict(),
            "model": self.model,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "LLMResponse":
        return cls(
            content=[block_from_dict(b) for b in data.get("content", [])],
            stop_reason=data.get("stop_reason", "end_turn"),
            usage=TokenUsage.from_dict(data.get("usage")),
            model=data.get("model", ""),
        )


class LLMError(MashError):
    """A provider call failed. `transient` errors are worth retrying with backoff."""

    def __init__(self, message: str, *, transient: bool, status_code: int | None = None, code: str = "LLM_ERROR"):
        super().__init__(message)
        self.transient = transient
        self.status_code = status_code
        self.code = code


class LLMNotConfiguredError(LLMError):
    """The provider lacks its credentials; the message names the variable to set."""

    def __init__(self, message: str):
        super().__init__(message, transient=False, code="LLM_NOT_CONFIGURED")


#: Called with each piece of text a model writes while it writes (`LLMProvider.stream`).
TextSink = Callable[[str], Awaitable[None]]


class LLMProvider(abc.ABC):
    """Base of every provider. Subclasses implement `complete`."""

    #: Model name reported in session info and events.
    model: str = ""
    #: Provider name in `llm.request.complete` events (`gen_ai.provider.name` when exported).
    provider: str = ""

    @abc.abstractmethod
    async def complete(self, request: LLMRequest) -> LLMResponse:
        """Run one model call. Raise `LLMError` (transient or not) on failure."""

    async def stream(self, request: LLMRequest, on_text: "TextSink") -> LLMResponse:
        """`complete`, telling `on_text` each piece of answer text as the model writes it.

        Providers whose SDK streams override this; the response is the same as
        `complete`'s. The default answers whole and tells `on_text` nothing: a client
        following the tokens then sees the step when it is stored.
        """
        return await self.complete(request)

    async def aclose(self) -> None:  # pragma: no cover - default has nothing to release
        return None
