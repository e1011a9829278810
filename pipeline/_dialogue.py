"""Conversation history and the LLM tool-call loop for one call."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import structlog

from ._llm import LLM, LLMUsage, Message, TextDelta, ToolCall, ToolCallRequest, ToolSpec

log = structlog.get_logger("voicerun.pipeline")


@dataclass(frozen=True, slots=True)
class ToolOutcome:
    result: Any
    is_error: bool = False
    end_call: bool = False
    handoff: str | None = None
    """The agent (as the tool runner names it) the call moves to once the whole batch is recorded."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ToolResultEvent:
    kind: Literal["tool_result"] = field(default="tool_result", init=False)
    call: ToolCall
    outcome: ToolOutcome


@dataclass(frozen=True, slots=True, kw_only=True)
class EndCallEvent:
    kind: Literal["end_call"] = field(default="end_call", init=False)
    reason: str = "agent_ended"


@dataclass(frozen=True, slots=True, kw_only=True)
class HandoffEvent:
    """The conversation moves to another agent; everything yielded after it is the new agent's.

    Dialogue.respond() yields it with only `to` (as the tool asked) and stops the turn; a
    Conversation that performs the switch yields its own, with the agent names resolved.
    """

    kind: Literal["handoff"] = field(default="handoff", init=False)
    to: str
    from_agent: str | None = None


ReplyEvent = TextDelta | LLMUsage | ToolResultEvent | EndCallEvent | HandoffEvent
ToolRunner = Callable[[ToolCall], Awaitable[ToolOutcome]]
FillerLookup = Callable[[str], str | None]
ContextKeep = Literal["full", "summary", "none"] | int
"""What of the history a new agent keeps: all of it, a summary, nothing, or the last N messages."""

SUMMARY_EXCHANGES = 3
SUMMARY_MAX_CHARS = 600
_QUOTE_MAX_CHARS = 160


@dataclass(frozen=True, slots=True)
class _Span:
    """Text of message `message` from `content_at`, `length` characters, streamed to the caller
    from character `stream_at` of the turn's reply."""

    stream_at: int
    message: int
    content_at: int
    length: int


class Conversation(Protocol):
    """What VoiceSession talks to: a Dialogue, or a workflow runtime that drives several."""

    def respond(self, user_text: str) -> AsyncIterator[ReplyEvent]:
        """Stream the reply to one caller turn."""
        ...

    def trim_last_reply(self, heard_chars: int) -> None:
        """The caller interrupted: of the last reply's text (respond()'s TextDeltas, joined), the
        first `heard_chars` characters were played; history keeps only those."""
        ...

    def retract_turn(self) -> str:
        """Undo the last turn (none of it was heard); returns its caller text for merging."""
        ...

    def add_assistant(self, text: str) -> None:
        """Record a line the agent said outside respond() (the greeting)."""
        ...


async def _no_tools(call: ToolCall) -> ToolOutcome:
    return ToolOutcome({"error": f"unknown tool {call.name!r}"}, is_error=True)


def _no_filler(name: str) -> str | None:
    return None


class Dialogue:
    """Owns the message history. respond() streams one reply, running tool calls between rounds.

    Every tool call of a batch finishes and is recorded before anything else happens, so a batch
    that mixes an ordinary tool with one that ends the call or hands off never loses either. After
    a batch that hands off, the round stops: the old agent's LLM is not asked again, and text it
    streamed after its first tool call of that round is dropped, so the next words the caller
    hears are the new agent's.
    """

    def __init__(
        self,
        llm: LLM,
        instructions: str,
        *,
        tools: Sequence[ToolSpec] = (),
        run_tool: ToolRunner = _no_tools,
        filler: FillerLookup = _no_filler,
        max_tool_rounds: int = 4,
    ) -> None:
        self.llm = llm
        self.tools = tuple(tools)
        self._run_tool = run_tool
        self._filler = filler
        self._max_rounds = max_tool_rounds
        self.messages: list[Message] = [Message("system", instructions)] if instructions else []
        self._turn_start = len(self.messages)
        self._spans: list[_Span] = []
        """Where this turn's assistant text sits in the reply stream the caller hears."""

    def add_assistant(self, text: str, *, stream_at: int | None = None) -> None:
        """Record something the agent said outside respond() (the greeting, a rule's line).
        stream_at: the line is part of this turn's reply, streamed from that character offset
        (so trim_last_reply() cuts it too)."""
        if stream_at is not None:
            self._spans.append(_Span(stream_at, len(self.messages), 0, len(text)))
        self.messages.append(Message("assistant", text))

    def add_user(self, text: str) -> None:
        """Start a turn without the LLM (a rule answered it): trim and retract act on it."""
        self._begin_turn()
        self.messages.append(Message("user", text))

    def _begin_turn(self) -> None:
        self._turn_start = len(self.messages)
        self._spans.clear()

    def add_tool_call(self, call: ToolCall, outcome: ToolOutcome) -> None:
        """Record a tool call made outside the LLM (by a rule) with its result."""
        self.messages.append(Message("assistant", "", tool_calls=(call,)))
        self.messages.append(Message("tool", json.dumps(outcome.result, default=str), tool_call_id=call.id))

    def mark_turn_start(self) -> None:
        """What follows is this turn's reply (after a switch: the new agent's part)."""
        self._begin_turn()

    async def respond(self, user_text: str, *, stream_at: int = 0) -> AsyncIterator[ReplyEvent]:
        self.add_user(user_text)
        async for ev in self.resume(stream_at=stream_at):
            yield ev

    async def resume(self, *, stream_at: int = 0) -> AsyncIterator[ReplyEvent]:
        """Answer the history as it stands (a new agent taking over a turn already recorded).
        stream_at: where this text starts in the turn's reply stream (after what was said before
        it in the same turn), so that trim_last_reply() can find it."""
        pos = stream_at
        spoke = False
        for _ in range(self._max_rounds):
            text: list[str] = []
            held: list[str] = []
            calls: list[ToolCall] = []
            first_text = True
            index = len(self.messages)  # this round's message is appended at the end
            try:
                async for ev in self.llm.chat(self.messages, self.tools):
                    if isinstance(ev, ToolCallRequest):
                        calls.append(ev.call)
                        continue
                    if isinstance(ev, TextDelta):
                        if calls:
                            # Said after a tool call: only true once the tools ran, and not
                            # said at all if the batch hands the call to another agent.
                            held.append(ev.text)
                            continue
                        if first_text and spoke and ev.text[:1] not in (" ", ""):
                            yield TextDelta(text=" ")  # rounds are sentences apart, not glued
                            pos += 1
                        self._spans.append(_Span(pos, index, sum(map(len, text)), len(ev.text)))
                        text.append(ev.text)
                        pos += len(ev.text)
                        first_text = False
                        spoke = spoke or bool(ev.text.strip())
                    yield ev
            finally:
                # Also on cancellation: what was generated is kept until the session trims it to
                # what was actually heard.
                if text or calls:
                    self.messages.append(Message("assistant", "".join(text), tool_calls=tuple(calls)))
            if not calls:
                return
            fillers = [f for c in calls if (f := self._filler(c.name))]
            if fillers:
                line = " ".join(fillers)
                m = self.messages[-1]
                if spoke:
                    pos += 1
                self._spans.append(
                    _Span(pos, len(self.messages) - 1, len(m.content) + 1 if m.content else 0, len(line))
                )
                yield TextDelta(text=(" " if spoke else "") + line)
                pos += len(line)
                spoke = True
                joined = f"{m.content} {line}" if m.content else line
                self.messages[-1] = Message("assistant", joined, tool_calls=m.tool_calls)
            outcomes = await asyncio.gather(*(self._run_tool(c) for c in calls))
            end = False
            handoff: str | None = None
            for call, outcome in zip(calls, outcomes, strict=True):
                self.messages.append(
                    Message("tool", json.dumps(outcome.result, default=str), tool_call_id=call.id)
                )
                yield ToolResultEvent(call=call, outcome=outcome)
                end = end or outcome.end_call
                if outcome.handoff is not None and not outcome.is_error:
                    if handoff is None:
                        handoff = outcome.handoff
                    else:
                        log.warning("handoff_ignored", tool=call.name, to=outcome.handoff, kept=handoff)
            if handoff is not None:
                yield HandoffEvent(to=handoff)
                return
            if held:
                # said once the tools ran: recorded in the order the caller hears it
                line = "".join(held)
                if spoke:
                    pos += 1
                self._spans.append(_Span(pos, len(self.messages), 0, len(line)))
                self.messages.append(Message("assistant", line))
                yield TextDelta(text=(" " if spoke else "") + line)
                pos += len(line)
                spoke = True
            if end:
                yield EndCallEvent()
                return

    def switch(
        self,
        instructions: str,
        *,
        tools: Sequence[ToolSpec] = (),
        llm: LLM | None = None,
        run_tool: ToolRunner | None = None,
        filler: FillerLookup | None = None,
        context: ContextKeep = "full",
    ) -> None:
        """Hand the conversation to another agent: its instructions and tools replace the old, and
        the history is kept as `context` says.

        full keeps every non-system message; an int N keeps the last N, never separating an
        assistant tool-call message from its results; none keeps nothing; summary replaces the
        history with one short, deterministic system note quoting the last few exchanges (no
        LLM is asked to write it, so it works offline and costs no latency at the switch).
        """
        history = [m for m in self.messages if m.role != "system"]
        kept: list[Message]
        if context == "full":
            kept = history
        elif context == "none":
            kept = []
        elif context == "summary":
            note = summarize(history)
            kept = [Message("system", note)] if note else []
        else:
            kept = _last_n(history, context)
        self.messages = ([Message("system", instructions)] if instructions else []) + kept
        self.tools = tuple(tools)
        if llm is not None:
            self.llm = llm
        if run_tool is not None:
            self._run_tool = run_tool
        if filler is not None:
            self._filler = filler
        self._begin_turn()

    def trim_last_reply(self, heard_chars: int) -> None:
        """The caller interrupted: this turn's reply becomes only what was played, the first
        `heard_chars` characters of its stream. Each message keeps the characters of it that were
        streamed before that offset; one left empty is dropped (a tool-call message keeps its
        calls). Text said before the turn's last switch belongs to the old agent and stays whole."""
        kept: dict[int, int] = {}
        for span in self._spans:
            heard = min(span.length, max(0, heard_chars - span.stream_at))
            reach = span.content_at + heard if heard else 0
            kept[span.message] = max(kept.get(span.message, 0), reach)
        for index in sorted(kept, reverse=True):  # deleting from the end keeps indices valid
            m = self.messages[index]
            text = m.content[: kept[index]].rstrip()
            if text or m.tool_calls:
                self.messages[index] = Message("assistant", text, tool_calls=m.tool_calls)
            else:
                del self.messages[index]
        self._spans.clear()

    def retract_turn(self) -> str:
        """Undo the last turn (nothing of its reply was heard); returns its user text for merging."""
        turn = self.messages[self._turn_start :]
        del self.messages[self._turn_start :]
        self._spans.clear()
        return next((m.content for m in turn if m.role == "user"), "")


def _last_n(history: list[Message], n: int) -> list[Message]:
    start = max(0, len(history) - n)
    # Never start on a tool result: its assistant tool-call message comes with it.
    while start > 0 and history[start].role == "tool":
        start -= 1
    return history[start:]


def _quote(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _QUOTE_MAX_CHARS else text[: _QUOTE_MAX_CHARS - 1].rstrip() + "…"


def summarize(history: Sequence[Message], exchanges: int = SUMMARY_EXCHANGES) -> str:
    """A bounded note on the last few exchanges, for the `summary` context policy."""
    lines: list[str] = []
    for m in history:
        if m.role == "user" and m.content.strip():
            lines.append(f"the caller said '{_quote(m.content)}'")
        elif m.role == "assistant":
            if m.content.strip():
                lines.append(f"the agent said '{_quote(m.content)}'")
            lines.extend(f"the agent called {c.name}" for c in m.tool_calls)
    if not lines:
        return ""
    lines = lines[-2 * exchanges :]
    note = "Earlier in this call: " + "; ".join(lines) + "."
    while len(note) > SUMMARY_MAX_CHARS and len(lines) > 1:
        lines = lines[1:]
        note = "Earlier in this call: " + "; ".join(lines) + "."
    return note[:SUMMARY_MAX_CHARS]
