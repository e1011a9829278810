"""Streaming chat-completion interface with tool calls and usage."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal


@dataclass(frozen=True, slots=True)
class ToolCall:
    id: str
    name: str
    arguments: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Message:
    role: Literal["system", "user", "assistant", "tool"]
    content: str
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None


@dataclass(frozen=True, slots=True)
class ToolSpec:
    name: str
    description: str
    parameters: Mapping[str, Any] = field(default_factory=lambda: {"type": "object", "properties": {}})


@dataclass(frozen=True, slots=True, kw_only=True)
class TextDelta:
    kind: Literal["text"] = field(default="text", init=False)
    text: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class ToolCallRequest:
    kind: Literal["tool_call"] = field(default="tool_call", init=False)
    call: ToolCall


@dataclass(frozen=True, slots=True, kw_only=True)
class LLMUsage:
    kind: Literal["usage"] = field(default="usage", init=False)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    served_by: int = 0
    """Which provider of a fallback chain used these tokens (0: the first, or no chain)."""


LLMEvent = TextDelta | ToolCallRequest | LLMUsage


class LLM(ABC):
    name: str
    model: str

    @abstractmethod
    def chat(self, messages: Sequence[Message], tools: Sequence[ToolSpec] = ()) -> AsyncIterator[LLMEvent]:
        """Stream one completion: text deltas, complete tool calls, then usage if the engine reports it."""

    async def warm(self) -> None:  # noqa: B027 - optional hook
        """Open connections ahead of the first request (best effort: never raises)."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""
