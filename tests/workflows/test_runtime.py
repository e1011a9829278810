"""WorkflowConversation: rules before the LLM, atomic handoffs, context policies, `back`, global
handoffs, failing tools and fillers, on a scripted LLM and fake tools (no audio, no network)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest

from pipeline import (
    LLM,
    EndCallEvent,
    HandoffEvent,
    LLMEvent,
    Message,
    ReplyEvent,
    TextDelta,
    ToolCall,
    ToolCallRequest,
    ToolOutcome,
    ToolResultEvent,
    ToolSpec,
)
from workflows import load_workflow_text
from workflows._runtime import WorkflowConversation

Step = Callable[[Sequence[Message], Sequence[ToolSpec]], list[LLMEvent]]


def say(text: str) -> LLMEvent:
    return TextDelta(text=text)


def call(name: str, call_id: str = "", **args: Any) -> LLMEvent:
    return ToolCallRequest(call=ToolCall(call_id or f"id_{name}", name, args))


class PlayLLM(LLM):
    """Answers each chat() with the next scripted step; records what it was shown."""

    name = model = "play"

    def __init__(self, *steps: list[LLMEvent] | Step) -> None:
        self.steps = list(steps)
        self.seen: list[tuple[list[Message], list[str]]] = []

    async def chat(
        self, messages: Sequence[Message], tools: Sequence[ToolSpec] = ()
    ) -> AsyncIterator[LLMEvent]:
        self.seen.append((list(messages), [t.name for t in tools]))
        step = self.steps.pop(0) if self.steps else [say("(nothing scripted)")]
        for ev in step(messages, tools) if callable(step) else step:
            yield ev


@dataclass
class FakeTools:
    """An agent's tools: results by name, an exception raises, a filler per name."""

    names: Sequence[str]
    results: Mapping[str, Any] = field(default_factory=dict)
    fillers: Mapping[str, str] = field(default_factory=dict)
    ran: list[str] = field(default_factory=list)

    def specs(self) -> Sequence[ToolSpec]:
        return [ToolSpec(n, f"The {n} tool.") for n in self.names]

    async def run(self, c: ToolCall) -> ToolOutcome:
        self.ran.append(c.name)
        if c.name == "end_call":
            return ToolOutcome({"ok": True}, end_call=True)
        result = self.results.get(c.name, {"ok": True})
        if isinstance(result, Exception):
            raise result
        return ToolOutcome(result)

    def filler_for(self, name: str) -> str | None:
        return self.fillers.get(name)


@dataclass
class State:
    user: Mapping[str, Any] = field(default_factory=dict)
    vars: Mapping[str, Any] = field(default_factory=dict)


WORKFLOW = """
version: 1
slug: bistro
start: host
variables:
  name: {type: string}
tools:  # run by FakeTools in these tests
  book_table:
    description: Book a table.
    http: {url: "https://bookings.invalid/book"}
  charge_card:
    description: Charge a card.
    http: {url: "https://payments.invalid/charge"}
handoffs:
  - to: human
    description: The caller asks for a person.
    say: Connecting you to a person.
agents:
  host:
    instructions: "You are the host. The caller is {{user.name}}."
    tools: [book_table, end_call]
    handoffs:
      - to: payments
        description: The caller wants to pay.
        say: Let me pass you to payments.
    rules:
      - keywords: [opening hours, open]
        say: We open at five.
      - match: "^(bye|goodbye)"
        say: Goodbye {{user.name}}!
        end_call: true
      - keywords: [deposit]
        handoff: payments
  payments:
    instructions: You take payments.
    tools: [charge_card]
    handoffs:
      - to: back
        description: The payment is done.
  human:
    instructions: You are a person.
    greeting: Hi, this is Sam.
"""


def make(
    llms: Mapping[str, LLM | None],
    tools: Mapping[str, FakeTools] | None = None,
    text: str = WORKFLOW,
    user: Mapping[str, Any] | None = None,
) -> WorkflowConversation:
    wf = load_workflow_text(text)
    toolsets = dict(tools or {})

    def tools_for(agent: str) -> FakeTools:
        return toolsets.setdefault(agent, FakeTools(wf.agent(agent).tools))

    return WorkflowConversation(wf, State(user=user or {"name": "Ada"}), tools_for, lambda a: llms.get(a))


async def turn(conv: WorkflowConversation, text: str) -> list[ReplyEvent]:
    return [ev async for ev in conv.respond(text)]


def text_of(events: Sequence[ReplyEvent]) -> str:
    """The reply stream exactly as the session receives it."""
    return "".join(e.text for e in events if isinstance(e, TextDelta))


def spoken(events: Sequence[ReplyEvent]) -> str:
    return " ".join("".join(e.text for e in events if isinstance(e, TextDelta)).split())


async def test_a_matching_rule_answers_without_calling_the_llm() -> None:
    llm = PlayLLM([say("From the LLM.")])
    conv = make({"host": llm})
    events = await turn(conv, "When are you OPEN tonight?")
    assert spoken(events) == "We open at five."
    assert llm.seen == []
    events = await turn(conv, "goodbye then")
    assert spoken(events) == "Goodbye Ada!" and isinstance(events[-1], EndCallEvent)
    assert llm.seen == []
    # no rule matches: the LLM answers, and sees the rules' turns in its history
    events = await turn(conv, "Do you have pasta?")
    assert spoken(events) == "From the LLM."
    ((messages, tools),) = llm.seen
    assert messages[0].content == "You are the host. The caller is Ada."
    assert [m.content for m in messages[1:]] == [
        "When are you OPEN tonight?", "We open at five.", "goodbye then", "Goodbye Ada!", "Do you have pasta?",
    ]  # fmt: skip
    assert tools == ["book_table", "end_call", "transfer_to_payments", "transfer_to_human"]


KEYPAD = """
version: 1
slug: menu
start: menu
agents:
  menu:
    instructions: Phone menu.
    rules:
      - dtmf: "1"
        say: Bookings.
      - dtmf: "[0-9]{4}#"
        say: Account found.
      - match: "1"
        say: You said one.
"""


async def test_keys_pressed_match_dtmf_rules_only_and_speech_never_does() -> None:
    from workflows import keypad_turn

    llm = PlayLLM([say("The LLM reads the keys.")])
    conv = make({"menu": llm}, text=KEYPAD)
    assert spoken(await turn(conv, keypad_turn("1"))) == "Bookings."
    assert spoken(await turn(conv, keypad_turn("1234#"))) == "Account found."
    assert spoken(await turn(conv, "1")) == "You said one."  # spoken "1" is not a key
    assert spoken(await turn(conv, keypad_turn("12"))) == "The LLM reads the keys."  # no dtmf rule: fullmatch
    assert llm.seen[0][0][-1].content == "[keypad] 12"


def test_a_rule_has_exactly_one_trigger() -> None:
    from workflows import WorkflowError

    for triggers in ('dtmf: "1"\n        match: one', "say: x"):
        text = KEYPAD.replace('dtmf: "1"', triggers, 1)
        with pytest.raises(WorkflowError, match="exactly one of 'match', 'keywords' or 'dtmf'"):
            load_workflow_text(text)
    with pytest.raises(WorkflowError, match="invalid regular expression"):
        load_workflow_text(KEYPAD.replace('dtmf: "1"', 'dtmf: "[1"', 1))


async def test_with_no_llm_the_fallback_answers_and_a_rule_hands_off() -> None:
    conv = make({})
    assert spoken(await turn(conv, "do you do pizza")) == (
        "Sorry, I didn't catch that. Could you say it another way?"
    )
    events = await turn(conv, "I want to pay a deposit")
    handoffs = [e for e in events if isinstance(e, HandoffEvent)]
    assert [(h.from_agent, h.to) for h in handoffs] == [("host", "payments")]
    # the handoff's line is said; payments has no greeting and no LLM: nothing more
    assert spoken(events) == "Let me pass you to payments."
    assert conv.current_agent == "payments" and conv.agent_history == ["host", "payments"]
    assert conv.handoffs == 1


async def test_handoff_in_a_mixed_batch_is_atomic_and_the_new_agent_speaks() -> None:
    host = PlayLLM(
        [
            say("Booking it now."),
            call("book_table", people=2),
            call("transfer_to_payments"),
            say(" I am still the host talking."),  # after the calls: must not be heard
        ],
        [say("The host again, after the switch.")],  # must never be asked
    )
    payments = PlayLLM([say("Payments here. Card number, please?")])
    tools = {"host": FakeTools(["book_table"], results={"book_table": {"booked": True}})}
    conv = make({"host": host, "payments": payments}, tools)
    events = await turn(conv, "book for two and I'll pay now")

    results = [e for e in events if isinstance(e, ToolResultEvent)]
    assert [r.call.name for r in results] == ["book_table", "transfer_to_payments"]
    assert results[0].outcome.result == {"booked": True}
    switch = next(i for i, e in enumerate(events) if isinstance(e, HandoffEvent))
    # both results come before the switch; the old agent says nothing after it
    assert all(events.index(r) < switch for r in results)
    assert (
        spoken(events) == "Booking it now. Let me pass you to payments. Payments here. Card number, please?"
    )
    assert "still the host" not in spoken(events)
    assert len(host.seen) == 1
    assert tools["host"].ran == ["book_table"]

    ((messages, offered),) = payments.seen
    assert messages[0] == Message("system", "You take payments.")
    assert offered == ["charge_card", "transfer_back", "transfer_to_human"]
    # full context: both tool results are in the history the new agent sees
    tool_msgs = [m for m in messages if m.role == "tool"]
    assert [m.tool_call_id for m in tool_msgs] == ["id_book_table", "id_transfer_to_payments"]
    assert messages[-1].role == "assistant" and messages[-1].content == "Let me pass you to payments."
    assert conv.current_agent == "payments" and conv.handoffs == 1


def policy_workflow(context: str) -> str:
    return f"""
version: 1
slug: policies
start: a
agents:
  a:
    instructions: Agent A.
    handoffs:
      - to: b
        context: {context}
  b:
    instructions: Agent B.
"""


async def _history_at_b(context: str) -> list[Message]:
    a = PlayLLM([say("First answer.")], [say("Second answer.")], [say("Moving you."), call("transfer_to_b")])
    b = PlayLLM([say("B here.")])
    conv = make({"a": a, "b": b}, text=policy_workflow(context))
    for text in ("one", "two", "three"):
        await turn(conv, text)
    assert conv.current_agent == "b"
    return b.seen[0][0]


def brief(messages: Sequence[Message]) -> list[tuple[str, str]]:
    return [(m.role, m.content) for m in messages]


async def test_context_full_keeps_everything() -> None:
    msgs = await _history_at_b("full")
    assert brief(msgs) == [
        ("system", "Agent B."), ("user", "one"), ("assistant", "First answer."), ("user", "two"),
        ("assistant", "Second answer."), ("user", "three"), ("assistant", "Moving you."),
        ("tool", '{"ok": true, "transferred_to": "b"}'),
    ]  # fmt: skip


async def test_context_none_keeps_only_the_new_prompt_and_the_caller_turn() -> None:
    msgs = await _history_at_b("none")
    # nothing is kept, so the caller's turn is given to the new agent again
    assert brief(msgs) == [("system", "Agent B."), ("user", "three")]


async def test_context_last_n_never_splits_a_tool_call_from_its_result() -> None:
    msgs = await _history_at_b("{last_n: 1}")
    # the last message is a tool result: its assistant tool-call message comes with it
    assert brief(msgs)[:3] == [
        ("system", "Agent B."), ("assistant", "Moving you."), ("tool", '{"ok": true, "transferred_to": "b"}'),
    ]  # fmt: skip
    assert msgs[1].tool_calls and msgs[1].tool_calls[0].name == "transfer_to_b"
    assert brief(msgs)[3:] == [("user", "three")]  # the turn itself was not kept: given again
    msgs = await _history_at_b("{last_n: 4}")
    assert brief(msgs) == [
        ("system", "Agent B."), ("assistant", "Second answer."), ("user", "three"), ("assistant", "Moving you."),
        ("tool", '{"ok": true, "transferred_to": "b"}'),
    ]  # fmt: skip


async def test_context_summary_is_one_bounded_note() -> None:
    msgs = await _history_at_b("summary")
    assert [m.role for m in msgs] == ["system", "system", "user"]
    note = msgs[1].content
    assert note.startswith("Earlier in this call: ")
    assert "the caller said 'three'" in note and "the agent called transfer_to_b" in note
    assert "'one'" not in note  # only the last few exchanges
    assert len(note) <= 600


async def test_back_returns_to_the_agent_that_handed_over() -> None:
    host = PlayLLM([call("transfer_to_payments")], [say("Host again. Anything else?")])
    payments = PlayLLM([say("Card, please?")], [say("Paid."), call("transfer_back")])
    conv = make({"host": host, "payments": payments})
    await turn(conv, "pay")
    events = await turn(conv, "4242")
    assert [(h.from_agent, h.to) for h in events if isinstance(h, HandoffEvent)] == [("payments", "host")]
    assert spoken(events) == "Paid. Host again. Anything else?"
    assert conv.agent_history == ["host", "payments", "host"] and conv.handoffs == 2
    assert host.seen[-1][0][0].content.startswith("You are the host.")


async def test_back_with_no_previous_agent_is_an_error_result() -> None:
    text = WORKFLOW.replace("start: host", "start: payments")
    payments = PlayLLM([call("transfer_back")], [say("I cannot do that.")])
    conv = make({"payments": payments}, text=text)
    events = await turn(conv, "go back")
    result = next(e for e in events if isinstance(e, ToolResultEvent))
    assert result.outcome.is_error and conv.current_agent == "payments"
    assert spoken(events) == "I cannot do that."


async def test_a_global_handoff_works_from_any_agent_and_the_greeting_speaks() -> None:
    payments = PlayLLM([say("Card, please?")], [call("transfer_to_human")])
    human = PlayLLM([say("must not be asked: the greeting answers")])
    conv = make({"host": PlayLLM([call("transfer_to_payments")]), "payments": payments, "human": human})
    await turn(conv, "pay")
    events = await turn(conv, "a person, please")
    assert spoken(events) == "Connecting you to a person. Hi, this is Sam."
    assert conv.current_agent == "human" and human.seen == []
    assert conv.agent_history == ["host", "payments", "human"]


async def test_a_failing_tool_gives_the_llm_an_error_and_the_turn_goes_on() -> None:
    host = PlayLLM([call("book_table", people=2)], [say("Sorry, booking is down right now.")])
    tools = {"host": FakeTools(["book_table"], results={"book_table": RuntimeError("database is down")})}
    conv = make({"host": host}, tools)
    events = await turn(conv, "book a table")
    result = next(e for e in events if isinstance(e, ToolResultEvent))
    assert result.outcome.is_error and "database is down" in str(result.outcome.result)
    assert not any(isinstance(e, EndCallEvent) for e in events)
    # the LLM saw the error and answered
    assert host.seen[1][0][-1].role == "tool" and "database is down" in host.seen[1][0][-1].content
    assert spoken(events) == "Sorry, booking is down right now."


async def test_filler_is_said_before_the_tool_runs() -> None:
    order: list[str] = []

    class Watching(FakeTools):
        async def run(self, c: ToolCall) -> ToolOutcome:
            order.append(f"run {c.name}")
            return await super().run(c)

    host = PlayLLM([call("book_table")], [say("Done.")])
    conv = make({"host": host}, {"host": Watching(["book_table"], fillers={"book_table": "One moment."})})
    async for ev in conv.respond("book"):
        if isinstance(ev, TextDelta) and ev.text.strip():
            order.append(f"say {ev.text.strip()}")
        elif isinstance(ev, ToolResultEvent):
            order.append("result")
    assert order == ["say One moment.", "run book_table", "result", "say Done."]


async def test_interrupted_after_a_handoff_trims_only_the_new_agents_words() -> None:
    host = PlayLLM([say("Sure."), call("transfer_to_payments")])
    payments = PlayLLM([say("Payments here. Please read me the card number slowly.")])
    conv = make({"host": host, "payments": payments})
    stream = text_of(await turn(conv, "pay"))
    # heard: the host's word, the say line, and two words of the payments agent
    heard = stream.index("Payments here.") + len("Payments here.")
    conv.trim_last_reply(heard)
    assistant = [m.content for m in conv.dialogue.messages if m.role == "assistant"]
    assert assistant[-2:] == ["Let me pass you to payments.", "Payments here."]


@pytest.mark.parametrize(
    ("heard", "kept"),
    [("", [("", True)]), ("Let me", [("Let me", True)]), ("Let me look.", [("Let me look.", True)]),
     ("Let me look. Found a", [("Let me look.", True), ("Found a", False)])],
)  # fmt: skip
async def test_trim_cuts_each_message_where_the_stream_was_heard(
    heard: str, kept: list[tuple[str, bool]]
) -> None:
    host = PlayLLM([say("Let me look."), call("book_table")], [say("Found a table at eight.")])
    conv = make({"host": host})
    stream = text_of(await turn(conv, "book"))
    assert stream.startswith(heard)
    conv.trim_last_reply(len(heard))
    texts = [(m.content, bool(m.tool_calls)) for m in conv.dialogue.messages if m.role == "assistant"]
    assert texts == kept


async def test_trim_finds_the_filler_and_the_llms_text_in_one_stream() -> None:
    # The LLM's words, the tool's filler (added by the Dialogue, not the LLM) and the LLM's words
    # after the tool: each message is cut where the caller stopped hearing it.
    host = PlayLLM([say("Sure."), call("book_table")], [say("Booked for eight.")])
    conv = make({"host": host}, {"host": FakeTools(["book_table"], fillers={"book_table": "One moment."})})
    stream = text_of(await turn(conv, "book"))
    assert " ".join(stream.split()) == "Sure. One moment. Booked for eight."
    conv.trim_last_reply(stream.index("moment") + len("moment."))
    assistant = [m.content for m in conv.dialogue.messages if m.role == "assistant"]
    assert assistant == ["Sure. One moment."]
    # A rule's line (recorded by the runtime) is cut the same way.
    stream = text_of(await turn(conv, "are you open tonight"))
    conv.trim_last_reply(stream.index("open") + len("open"))
    assert conv.dialogue.messages[-1].content == "We open"


async def test_text_after_a_tool_call_is_said_only_once_the_tool_has_run() -> None:
    order: list[str] = []

    class Watching(FakeTools):
        async def run(self, c: ToolCall) -> ToolOutcome:
            order.append("run")
            return await super().run(c)

    host = PlayLLM([call("book_table"), say("Booked.")], [])
    conv = make({"host": host}, {"host": Watching(["book_table"])})
    async for ev in conv.respond("book"):
        if isinstance(ev, TextDelta) and ev.text.strip():
            order.append(ev.text.strip())
    assert order == ["run", "Booked."]
    assert [m.role for m in conv.dialogue.messages[-3:]] == ["assistant", "tool", "assistant"]


VARS_WORKFLOW = """
version: 1
slug: diets
start: host
variables:
  name: {type: string, required: true}
vars:
  diet: {type: string}
agents:
  host:
    instructions: Host for {{user.name}}.
    tools: [set_variable]
    rules:
      - keywords: [vegetarian]
        say: Noted, {{user.name}}.
        tool: {name: set_variable, arguments: {name: diet, value: vegetarian}}
        handoff: chef
  chef:
    instructions: "Cook for {{user.name}}. Diet: {{vars.diet}}."
"""


async def test_variables_set_by_a_tool_reach_the_next_agents_templates() -> None:
    import aiohttp

    from workflows import CallState, ToolBox

    wf = load_workflow_text(VARS_WORKFLOW)
    state = CallState.bind(wf, {"name": "Ada", "crm_id": "x1"})
    chef = PlayLLM([say("I'll cook something green.")])
    async with aiohttp.ClientSession() as http:
        boxes = {a: ToolBox(wf, spec.tools, state, http=http) for a, spec in wf.agents.items()}
        conv = WorkflowConversation(wf, state, boxes.__getitem__, {"host": None, "chef": chef}.__getitem__)
        assert conv.dialogue.messages[0].content == "Host for Ada."
        events = await turn(conv, "I'm vegetarian")
    result = next(e for e in events if isinstance(e, ToolResultEvent))
    assert result.call.arguments == {"name": "diet", "value": "vegetarian"} and not result.outcome.is_error
    assert state.vars["diet"] == "vegetarian"
    assert chef.seen[0][0][0].content == "Cook for Ada. Diet: vegetarian."
    assert spoken(events) == "Noted, Ada. I'll cook something green."
