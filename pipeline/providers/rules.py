"""The offline responder: ordered pattern -> reply rules with a fallback, behind the LLM interface.

Deterministic and instant, so calls run with no model and no network; it reports no token usage
because it uses none.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .._llm import LLM, LLMEvent, Message, TextDelta, ToolCall, ToolCallRequest, ToolSpec


@dataclass(frozen=True, slots=True)
class Rule:
    pattern: re.Pattern[str]
    say: str | None = None
    tool: str | None = None
    arguments: Mapping[str, Any] = field(default_factory=dict)


class RulesLLM(LLM):
    name = "rules"
    model = "rules"

    def __init__(self, rules: Sequence[Rule], fallback: str, words_per_delta: int = 4) -> None:
        self.rules = tuple(rules)
        self.fallback = fallback
        self._step = max(1, words_per_delta)
        self._calls = 0

    def match(self, text: str) -> Rule | None:
        return next((r for r in self.rules if r.pattern.search(text)), None)

    async def chat(
        self, messages: Sequence[Message], tools: Sequence[ToolSpec] = ()
    ) -> AsyncIterator[LLMEvent]:
        last = messages[-1] if messages else None
        if last is None or last.role != "user":
            return  # after a tool result the rule's line has already been said
        rule = self.match(last.content)
        text = rule.say if rule is not None else self.fallback
        if text:
            words = text.split(" ")
            for i in range(0, len(words), self._step):
                chunk = " ".join(words[i : i + self._step])
                yield TextDelta(text=chunk + (" " if i + self._step < len(words) else ""))
        if rule is not None and rule.tool is not None:
            self._calls += 1
            yield ToolCallRequest(call=ToolCall(f"rule_{self._calls}", rule.tool, dict(rule.arguments)))
