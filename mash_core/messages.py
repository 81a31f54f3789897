"""Conversation types: content blocks and messages, serialisable to plain dicts.

The dict form is what checkpoints and events store, so `to_dict`/`from_dict` must
round-trip exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Union


@dataclass(frozen=True)
class TextBlock:
    text: str
    type: Literal["text"] = "text"

    def to_dict(self) -> dict[str, Any]:
        return {"type": "text", "text": self.text}


@dataclass(frozen=True)
class ToolCallBlock:
    id: str
    name: str
    arguments: dict[str, Any] = field(default_factory=dict)
    type: Literal["tool_call"] = "tool_call"

    def to_dict(self) -> dict[str, Any]:
        return {"type": "tool_call", "id": self.id, "name": self.name, "arguments": self.arguments}


@dataclass(frozen=True)
class ToolResultBlock:
    tool_call_id: str
    content: str
    is_error: bool = False
    type: Literal["tool_result"] = "tool_result"

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": "tool_result",
            "tool_call_id": self.tool_call_id,
            "content": self.content,
            "is_error": self.is_error,
        }


ContentBlock = Union[TextBlock, ToolCallBlock, ToolResultBlock]


def block_from_dict(data: dict[str, Any]) -> ContentBlock:
    kind = data.get("type")
    if kind == "text":
        return TextBlock(text=data["text"])
    if kind == "tool_call":
        return ToolCallBlock(id=data["id"], name=data["name"], arguments=dict(data.get("arguments") or {}))
    if kind == "tool_result":
        return ToolResultBlock(
            tool_call_id=data["tool_call_id"], content=data["content"], is_error=bool(data.get("is_error"))
        )
    raise ValueError(f"unknown content block type: {kind!r}")


class HasContent:
    """What a message and a model's answer say, read off their `content` blocks."""

    content: list

    @property
    def text(self) -> str:
        return "".join(b.text for b in self.content if isinstance(b, TextBlock))

    @property
    def tool_calls(self) -> list[ToolCallBlock]:
        return [b for b in self.content if isinstance(b, ToolCallBlock)]


@dataclass
class Message(HasContent):
    role: Literal["user", "assistant"]
    content: list[ContentBlock]

    @classmethod
    def user(cls, text: str) -> "Message":
        return cls(role="user", content=[TextBlock(text)])

    @classmethod
    def assistant(cls, text: str) -> "Message":
        return cls(role="assistant", content=[TextBlock(text)])

    def to_dict(self) -> dict[str, Any]:
        return {"role": self.role, "content": [b.to_dict() for b in self.content]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Message":
        return cls(role=data["role"], content=[block_from_dict(b) for b in data["content"]])


@dataclass(frozen=True)
class HistoryTurn:
    """One earlier exchange of the session, as loaded from memory."""

    user_message: str
    agent_response: str

    def to_messages(self) -> list[Message]:
        return [Message.user(self.user_message), Message.assistant(self.agent_response)]
