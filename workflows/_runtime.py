"""A call's conversation across agents: rules first, then the agent's LLM, and atomic handoffs.

WorkflowConversation is what VoiceSession (or the text-mode test runner) talks to. It holds one
Dialogue for the whole call and switches it in place at each handoff, so the history the new
agent keeps follows the handoff's context policy.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import structlog

from pipeline import (
    LLM,
    ContextKeep,
    Dialogue,
    EndCallEvent,
    HandoffEvent,
    LLMEvent,
    Message,
    ReplyEvent,
    TextDelta,
    ToolCall,
    ToolOutcome,
    ToolResultEvent,
    ToolSpec,
)

from ._model import BACK, AgentSpec, HandoffSpec, LastN, RuleSpec, Workflow
from ._template import render

log = structlog.get_logger("voicerun.workflows")

MAX_HANDOFFS_PER_TURN = 3
"""Agents passing a turn back and forth stop here; the last one answers."""


class CallData(Protocol):
    """What templates read: the caller's `user` data and the call's `vars` (a CallState)."""

    @property
    def user(self) -> Mapping[str, Any]: ...

    @property
    def vars(self) -> Mapping[str, Any]: ...


class AgentTools(Protocol):
    """One agent's tools (a workflows ToolBox): specs for the LLM, a runner, filler lines."""

    def specs(self) -> Sequence[ToolSpec]: ...

    def run(self, call: ToolCall) -> Awaitable[ToolOutcome]: ...

    def filler_for(self, name: str) -> str | None:
        """The line said while the tool runs, already rendered; None if it has none."""
        ...


ToolsFactory = Callable[[str], AgentTools]
"""Agent name -> its tools."""
LLMFactory = Callable[[str], LLM | None]
"""Agent name -> its LLM, or None for the `rules` provider (rules and the fallback line only)."""


def transfer_tool_name(target: str) -> str:
    return "transfer_back" if target == BACK else f"transfer_to_{target}"


def context_keep(policy: str | LastN) -> ContextKeep:
    if isinstance(policy, LastN):
        return policy.last_n
    if policy in ("full", "summary", "none"):
        return policy  # type: ignore[return-value]  # narrowed by the check above
    raise ValueError(f"unknown context policy {policy!r}")


@dataclass(frozen=True, slots=True)
class _Transfer:
    spec: HandoffSpec
    to: str


class WorkflowConversation:
    """The Conversation of one call of a workflow (see pipeline.Conversation).

    respond(): the current agent's rules first (the first match acts: say, then its tool, then its
    handoff, then end_call, with no LLM call); otherwise the agent's LLM with its tools and one
    transfer tool per handoff; with no LLM, the agent's fallback line. A handoff happens after the
    whole tool batch is recorded; then the handoff's `say` line, then the new agent's greeting, or
    (no greeting) the new agent's LLM answers the same caller turn.
    """

    def __init__(
        self,
        workflow: Workflow,
        state: CallData,
        tools: ToolsFactory,
        llms: LLMFactory,
        *,
        max_tool_rounds: int = 4,
    ) -> None:
        self.workflow = workflow
        self.state = state
        self._tools_for = tools
        self._llm_for = llms
        self.current_agent: str = workflow.start
        self.agent_history: list[str] = [workflow.start]
        self.handoffs = 0
        self._came_from: list[str] = []
        self._tools: AgentTools = tools(workflow.start)
        self._llm: LLM | None = llms(workflow.start)
        self._transfers: dict[str, _Transfer] = {}
        self._turn_user = ""
        self._said = ""  # what this turn has said so far (the stream the caller hears)
        self.dialogue = Dialogue(
            self._llm or _NoLLM(),
            self._render(self.spec.instructions),
            tools=self._tool_specs(),
            run_tool=self._run_tool,
            filler=self._filler,
            max_tool_rounds=max_tool_rounds,
        )

    # -- the agent ------------------------------------------------------------------------

    @property
    def spec(self) -> AgentSpec:
        return self.workflow.agent(self.current_agent)

    def greeting(self) -> str | None:
        """The start agent's greeting, rendered (the session plays it and records it)."""
        g = self.spec.greeting
        return self._render(g) if g else None

    def _render(self, text: str) -> str:
        return render(text, user=self.state.user, vars=self.state.vars)

    def _tool_specs(self) -> list[ToolSpec]:
        self._transfers = {}
        specs = list(self._tools.specs())
        for h in self.workflow.handoffs_for(self.current_agent):
            if h.to == self.current_agent:
                continue
            name = transfer_tool_name(h.to)
            if name in self._transfers:
                continue  # an agent's own handoff wins over a global one to the same target
            self._transfers[name] = _Transfer(h, h.to)
            target = "the agent that handed the call over" if h.to == BACK else f"the {h.to} agent"
            specs.append(ToolSpec(name, h.description or f"Transfer the caller to {target}."))
        return specs

    def _filler(self, name: str) -> str | None:
        return self._tools.filler_for(name)  # rendered by the tools (never twice: user data is data)

    async def _run_tool(self, call: ToolCall) -> ToolOutcome:
        transfer = self._transfers.get(call.name)
        if transfer is None:
            return await self._run_agent_tool(call)
        to = self._resolve(transfer.to)
        if to is None:
            return ToolOutcome({"error": "there is no previous agent to go back to"}, is_error=True)
        return ToolOutcome({"ok": True, "transferred_to": to}, handoff=transfer.to)

    async def _run_agent_tool(self, call: ToolCall) -> ToolOutcome:
        try:
            return await self._tools.run(call)
        except Exception as exc:  # a tool's failure is the LLM's to handle, never the call's end
            log.error("tool_failed", tool=call.name, error=str(exc), exc_info=True)
            return ToolOutcome({"error": f"tool {call.name} failed: {exc}"}, is_error=True)

    def _resolve(self, to: str) -> str | None:
        if to != BACK:
            return to
        return self._came_from[-1] if self._came_from else None

    # -- Conversation -----------------------------------------------------------------------

    async def respond(self, user_text: str) -> AsyncIterator[ReplyEvent]:
        self._turn_user = user_text
        self._said = ""
        rule = self._match(user_text)
        events: AsyncIterator[ReplyEvent] | None
        if rule is not None:
            self.dialogue.add_user(user_text)
            events = self._run_rule(rule)
        elif self._llm is None:
            self.dialogue.add_user(user_text)
            events = self._say(self._render(self.spec.fallback))
        else:
            events = self.dialogue.respond(user_text, stream_at=0)
        switches = 0
        while events is not None:
            request: HandoffEvent | None = None
            async for ev in events:
                if isinstance(ev, HandoffEvent) and ev.from_agent is None:
                    request = ev  # the last event of its stream: the batch is recorded
                    continue
                if isinstance(ev, TextDelta):
                    self._said += ev.text
                yield ev
            events = None
            if request is not None:
                if switches >= MAX_HANDOFFS_PER_TURN:
                    log.warning("handoff_limit_reached", to=request.to, limit=MAX_HANDOFFS_PER_TURN)
                    return
                switches += 1
                events = self._hand_off(request.to)

    async def _hand_off(self, to: str) -> AsyncIterator[ReplyEvent]:
        """Switch to `to` (an agent, or `back`), then let the new agent speak."""
        old = self.current_agent
        spec = next((h for h in self.workflow.handoffs_for(old) if h.to == to), HandoffSpec(to=to))
        if to == BACK:
            if not self._came_from:
                log.warning("handoff_ignored", to=to, reason="no previous agent")
                return
            to = self._came_from.pop()
        else:
            self._came_from.append(old)
        self._switch(to, spec)
        if spec.say:
            # Said by the old agent as it lets go, and in the new agent's history, so it knows
            # what the caller was told.
            async for ev in self._say(self._render(spec.say)):
                yield ev
            self.dialogue.mark_turn_start()
        yield HandoffEvent(to=to, from_agent=old)
        greeting = self.spec.greeting
        if greeting:
            async for ev in self._say(self._render(greeting)):
                yield ev
            return
        if self._llm is None:
            return
        if self._said.strip() and not self._said[-1].isspace():
            yield TextDelta(text=" ")  # its first words are a new sentence, not glued on
        if self._turn_user_kept():
            events = self.dialogue.resume(stream_at=len(self._said))
        else:
            events = self.dialogue.respond(self._turn_user, stream_at=len(self._said))
        async for ev in events:
            yield ev

    def _switch(self, to: str, spec: HandoffSpec) -> None:
        self.current_agent = to
        self.agent_history.append(to)
        self.handoffs += 1
        self._tools = self._tools_for(to)
        self._llm = self._llm_for(to)
        self.dialogue.switch(
            self._render(self.spec.instructions),
            tools=self._tool_specs(),
            llm=self._llm or _NoLLM(),
            context=context_keep(spec.context),
        )
        structlog.contextvars.bind_contextvars(agent=to)
        context = spec.context if isinstance(spec.context, str) else f"last_n:{spec.context.last_n}"
        log.info("agent_switched", context=context, handoffs=self.handoffs)

    def _turn_user_kept(self) -> bool:
        """Whether this turn's caller message survived the context policy (then it is answered
        as it stands; otherwise it is given to the new agent again)."""
        last = next((m for m in reversed(self.dialogue.messages) if m.role == "user"), None)
        return last is not None and last.content == self._turn_user

    def _match(self, text: str) -> RuleSpec | None:
        return next((r for r in self.spec.rules if r.matches(text)), None)

    async def _say(self, line: str) -> AsyncIterator[ReplyEvent]:
        if not line:
            return
        sep = " " if self._said.strip() else ""
        self.dialogue.add_assistant(line, stream_at=len(self._said) + len(sep))
        yield TextDelta(text=sep + line)

    async def _run_rule(self, rule: RuleSpec) -> AsyncIterator[ReplyEvent]:
        log.info("rule_matched", pattern=rule.match or rule.dtmf or ",".join(rule.keywords or ()))
        if rule.say:
            async for ev in self._say(self._render(rule.say)):
                yield ev
        end = rule.end_call
        handoff_by_tool: str | None = None
        if rule.tool is not None:
            args = {k: self._render(v) if isinstance(v, str) else v for k, v in rule.tool.arguments.items()}
            call = ToolCall(f"rule_{rule.tool.name}_{len(self.dialogue.messages)}", rule.tool.name, args)
            filler = self._filler(call.name)
            if filler:
                async for ev in self._say(filler):
                    yield ev
            outcome = await self._run_tool(call)
            self.dialogue.add_tool_call(call, outcome)
            yield ToolResultEvent(call=call, outcome=outcome)
            end = end or outcome.end_call
            handoff_by_tool = outcome.handoff
        handoff = rule.handoff or handoff_by_tool
        if handoff is not None:
            yield HandoffEvent(to=handoff)
        if end:
            yield EndCallEvent()

    def trim_last_reply(self, heard_chars: int) -> None:
        # The dialogue placed each of its messages in this turn's stream (stream_at); what the
        # old agent said before a handoff is no longer its to cut.
        self.dialogue.trim_last_reply(heard_chars)

    def retract_turn(self) -> str:
        text = self.dialogue.retract_turn()
        return text or self._turn_user

    def add_assistant(self, text: str) -> None:
        self.dialogue.add_assistant(text)


class _NoLLM(LLM):
    """Stands in for an agent on the `rules` provider; never asked (the runtime checks first)."""

    name = model = "none"

    async def chat(
        self, messages: Sequence[Message], tools: Sequence[ToolSpec] = ()
    ) -> AsyncIterator[LLMEvent]:
        return
        yield  # pragma: no cover
