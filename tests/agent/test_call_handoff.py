"""A handoff during a call (scripted engines, virtual clock): transcript entries carry the agent
active when each was said, the report counts the handoff, and log lines switch `agent`."""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

import numpy as np

from agent._call import CallRecord
from agent._providers import ProviderPool
from agent._recording import call_from_recording
from agent._report import report_dict
from pipeline import SAMPLE_RATE, STT, TTS
from pipeline.testing import ScriptedSTT, ToneTTS, speech_like
from workflows import ProviderSpec, load_workflow_text

# The caller is synthetic buzz, not speech: the end-of-turn model cannot judge it, so these
# turns end on silence (the model's own tests are in tests/pipeline/test_turn_end_of_turn.py).
WORKFLOW = """
version: 1
slug: handoff-call
defaults:
  turn: {end_of_turn: silence}
start: host
agents:
  host:
    instructions: Host.
    greeting: Welcome.
    handoffs:
      - to: payments
        say: Let me pass you to payments.
    rules:
      - keywords: [pay]
        say: Sure.
        handoff: payments
  payments:
    instructions: Payments.
    greeting: Payments here.
    rules:
      - keywords: [card]
        say: Thanks, charged.
"""


class ScriptedPool(ProviderPool):
    def __init__(self, transcripts: list[str], seconds_per_segment: float = 0.3) -> None:
        super().__init__()
        self._transcripts = transcripts
        self._seconds = seconds_per_segment

    async def stt(self, spec: ProviderSpec) -> STT:
        return ScriptedSTT(self._transcripts)

    async def tts(self, spec: ProviderSpec) -> TTS:
        return ToneTTS(self._seconds)


async def simulate(workflow: str, audio: np.ndarray, pool: ProviderPool) -> CallRecord:
    record, _ = await call_from_recording(
        load_workflow_text(workflow), audio, fast=True, providers=pool, call_id="call-handoff"
    )
    return record


async def test_handoff_moves_transcript_and_logs_to_the_new_agent(
    captured_logs: list[MutableMapping[str, Any]],
) -> None:
    silence = np.zeros(2 * SAMPLE_RATE, np.int16)
    audio = np.concatenate(
        [silence, speech_like(1.0, seed=1), silence, silence, speech_like(1.0, seed=2), silence]
    )
    record = await simulate(WORKFLOW, audio, ScriptedPool(["I want to pay", "my card is ready"]))

    said = [(e["role"], e["content"], e["agent_name"]) for e in record.transcript if e["role"] != "system"]
    assert said == [
        ("assistant", "Welcome.", "host"),
        ("user", "I want to pay", "host"),
        ("assistant", "Sure. Let me pass you to payments.", "host"),
        ("assistant", "Payments here.", "payments"),
        ("user", "my card is ready", "payments"),
        ("assistant", "Thanks, charged.", "payments"),
    ]
    handoff = next(e for e in record.transcript if "handoff" in e)
    assert handoff["handoff"] == {"from": "host", "to": "payments"} and handoff["agent_name"] == "payments"
    report = report_dict(record)
    assert report["agent_history"] == ["host", "payments"]
    assert report["metrics"]["agent_handoffs"] == 1
    assert report["current_agent"] is None  # the call has ended

    names = [e["event"] for e in captured_logs]
    switch = names.index("agent_switched")  # the runtime logs the switch as the new agent
    assert all(e["agent"] == "host" for e in captured_logs[:switch]), captured_logs[:switch]
    after = captured_logs[switch:]
    assert {"turn_completed", "call_ended"} <= {e["event"] for e in after}
    for event in after:
        assert event.get("agent") == "payments", event
        assert event.get("call_id") == "call-handoff", event


async def test_interrupting_the_new_agent_keeps_the_old_agents_words_whole() -> None:
    long_greeting = "Payments here. " + "We take every card and most wallets. " * 4
    workflow = WORKFLOW.replace("greeting: Payments here.", f"greeting: {long_greeting.strip()}")
    silence = np.zeros(SAMPLE_RATE, np.int16)
    # reply segments are 1 s each: "Sure." "Let me pass..." then the greeting; talk over it at ~6.5 s
    audio = np.concatenate(
        [silence, speech_like(1.0, seed=1), np.zeros(int(3.5 * SAMPLE_RATE), np.int16), speech_like(2.0, seed=2),
         np.zeros(4 * SAMPLE_RATE, np.int16)]
    )  # fmt: skip
    record = await simulate(workflow, audio, ScriptedPool(["I want to pay", "wait, stop please"], 1.0))
    said = [e for e in record.transcript if e["role"] == "assistant"]
    host, payments = said[1], said[2]
    assert (host["agent_name"], host["content"]) == ("host", "Sure. Let me pass you to payments.")
    assert not host.get("interrupted")
    assert payments["agent_name"] == "payments" and payments.get("interrupted") is True
    assert payments["content"] and long_greeting.startswith(payments["content"])
    assert len(payments["content"]) < len(long_greeting) / 2
