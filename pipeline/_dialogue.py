"""Conversation history and the LLM tool-call loop for one call."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from ._llm import LLM, LLMUsage, Message, TextDelta, ToolCall, ToolCallRequest, ToolSpec


@dataclass(frozen=True, slots=True)
class ToolOutcome:
    result: Any
    is_error: bool = False
    end_call: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class ToolResultEvent:
    kind: Literal["tool_result"] = field(default="tool_result", init=False)
    call: ToolCall
    outcome: ToolOutcome


@dataclass(frozen=True, slots=True, kw_only=True)
class EndCallEvent:
    kind: Literal["end_call"] = field(default="end_call", init=False)
    reason: str = "agent_ended"


ReplyEvent = TextDelta | LLMUsage | ToolResultEvent | EndCallEvent
ToolRunner = Callable[[ToolCall], Awaitable[ToolOutcome]]


async def _no_tools(call: ToolCall) -> ToolOutcome:
    return ToolOutcome({"error": f"unknown tool {call.name!r}"}, is_error=True)


class Dialogue:
    """Owns the message history. respond() streams one reply, running tool calls between rounds.

    Every tool call of a batch finishes and is recorded before the next LLM round, so a batch that
    mixes an ordinary tool with one that ends the call (or hands off) never loses either.
    """

    def __init__(
        self,
        llm: LLM,
        instructions: str,
        *,
        tools: Sequence[ToolSpec] = (),
        run_tool: ToolRunner = _no_tools,
        max_tool_rounds: int = 4,
    ) -> None:
        self.llm = llm
        self.tools = tuple(tools)
        self._run_tool = run_tool
        self._max_rounds = max_tool_rounds
        self.messages: list[Message] = [Message("system", instructions)] if instructions else []
        self._turn_start = len(self.messages)

    def add_assistant(self, text: str) -> None:
        """Record something the agent said outside respond() (the greeting, a rule's line)."""
        self.messages.append(Message("assistant", text))

    async def respond(self, user_text: str) -> AsyncIterator[ReplyEvent]:
        self._turn_start = len(self.messages)
        self.messages.append(Message("user", user_text))
        for _ in range(self._max_rounds):
            text: list[str] = []
            calls: list[ToolCall] = []
            try:
                async for ev in self.llm.chat(self.messages, self.tools):
                    if isinstance(ev, ToolCallRequest):
                        calls.append(ev.call)
                        continue
                    if isinstance(ev, TextDelta):
                        text.append(ev.text)
                    yield ev
            finally:
                # Also on cancellation: what was generated is kept until the session trims it to
                # what was actually heard.
                if text or calls:
                    self.messages.append(Message("assistant", "".join(text), tool_calls=tuple(calls)))
            if not calls:
                return
            outcomes = await asyncio.gather(*(self._run_tool(c) for c in calls))
            end = False
            for call, outcome in zip(calls, outcomes, strict=True):
                self.messages.append(
                    Message("tool", json.dumps(outcome.result, default=str), tool_call_id=call.id)
                )
                yield ToolResultEvent(call=call, outcome=outcome)
                end = end or outcome.end_call
            if end:
                yield EndCallEvent()
                return

    def trim_last_reply(self, spoken: str) -> None:
        """The caller interrupted: the last assistant text becomes only what was played."""
        for i in range(len(self.messages) - 1, self._turn_start - 1, -1):
            m = self.messages[i]
            if m.role == "assistant" and not m.tool_calls:
                if spoken:
                    self.messages[i] = Message("assistant", spoken)
                else:
                    del self.messages[i]
                return

    def retract_turn(self) -> str:
        """Undo the last turn (nothing of its reply was heard); returns its user text for merging."""
        turn = self.messages[self._turn_start :]
        del self.messages[self._turn_start :]
        return next((m.content for m in turn if m.role == "user"), "")
