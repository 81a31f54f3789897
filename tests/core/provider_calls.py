"""Calls the provider tests make: one or more completions, a failure, a streamed call; each
closes the provider's client afterwards, as a run does."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from mash_core.llm import LLMError, LLMRequest
from mash_core.messages import Message


def ask(text: str, **kwargs: Any) -> LLMRequest:
    return LLMRequest(system="Be brief.", messages=[Message.user(text)], **kwargs)


def complete(p: Any, *requests: LLMRequest) -> Any:
    async def go() -> Any:
        try:
            return [await p.complete(r) for r in requests]
        finally:
            await p.aclose()

    out = asyncio.run(go())
    return out[0] if len(out) == 1 else out


def failure(p: Any, request: LLMRequest) -> LLMError:
    with pytest.raises(LLMError) as info:
        complete(p, request)
    return info.value


def streamed(p: Any, request: LLMRequest) -> tuple[Any, list[str]]:
    """The response of `p.stream(request, ...)` and the pieces of text it was told."""
    pieces: list[str] = []

    async def on_text(text: str) -> None:
        pieces.append(text)

    async def go() -> Any:
        try:
            return await p.stream(request, on_text)
        finally:
            await p.aclose()

    return asyncio.run(go()), pieces
