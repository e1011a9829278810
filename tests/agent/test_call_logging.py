"""Every log line a call writes carries its call_id and agent, including lines from its tasks."""

from __future__ import annotations

from typing import Any

import numpy as np
import structlog

from agent._recording import call_from_recording
from pipeline import SAMPLE_RATE
from workflows import load_workflow_text

WORKFLOW = """
version: 1
slug: log-check
start: main
agents:
  main:
    instructions: Test.
    greeting: Hello there.
    fallback: I see.
"""


async def test_call_logs_carry_call_id_and_agent(
    captured_logs: list[dict[str, Any]], speech_samples: Any
) -> None:
    words = np.frombuffer(speech_samples[1].pcm, np.int16)
    audio = np.concatenate([np.zeros(2 * SAMPLE_RATE, np.int16), words, np.zeros(2 * SAMPLE_RATE, np.int16)])
    record, _ = await call_from_recording(
        load_workflow_text(WORKFLOW), audio, fast=True, call_id="call-under-test"
    )
    assert record.summary is not None and len(record.summary.turns) == 1
    names = {e["event"] for e in captured_logs}
    assert {"call_started", "turn_completed", "call_ended"} <= names
    for event in captured_logs:
        assert event.get("call_id") == "call-under-test", event
        assert event.get("agent") == "main", event
    # and nothing leaks into the caller's context once the call is over
    assert "call_id" not in structlog.contextvars.get_contextvars()
