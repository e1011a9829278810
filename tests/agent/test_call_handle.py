"""The Call handle: run, end from outside, snapshot, observers, and billing each call by the
providers that served it while calls share a process and its fallback chains."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Mapping
from typing import Any

import numpy as np
import pytest

from agent import ENDED_BY_API, Call, ProviderPool
from pipeline import (
    FRAME_S,
    SAMPLE_RATE,
    TTS,
    AgentSpeech,
    ProviderError,
    RealClock,
    SessionEvent,
    UsageRecorded,
    VirtualClock,
    frames,
)
from pipeline.providers import PROVIDERS, ProviderRegistry
from pipeline.testing import ToneTTS, instant_providers
from workflows import load_workflow_text

TONE = ToneTTS(0.1)


class ControlledTTS(TTS):
    """Speaks a tone; with `fails`, text with FAIL fails at once; text with HOLD waits for `gate`."""

    def __init__(self, name: str, gate: asyncio.Event, holding: asyncio.Event, *, fails: bool = True) -> None:
        self.name = self.model = name
        self._gate = gate
        self._holding = holding
        self._fails = fails

    async def synthesize(self, text: str) -> AsyncIterator[bytes]:
        if self._fails and "FAIL" in text:
            raise ProviderError(f"{self.name}: 503", provider=self.name, retryable=True)
        if "HOLD" in text:
            self._holding.set()
            await self._gate.wait()
        async for pcm in TONE.synthesize(text):
            yield pcm


def _registry(tts: Mapping[str, TTS]) -> ProviderRegistry:
    base = instant_providers()
    entries = {
        name: dataclasses.replace(PROVIDERS.entry("tts", name), build=lambda m, o, t=t: t)
        for name, t in tts.items()
    }
    return dataclasses.replace(base, tts={**base.tts, **entries})


WORKFLOW = load_workflow_text("""
version: 1
slug: handle
start: desk
variables:
  word: {type: string}
defaults:
  stt: whisper
  llm: rules
  tts: [polly, openai]
  turn: {end_of_turn: silence}
agents:
  desk:
    instructions: Test.
    greeting: "{{user.word}} hello there."
""")


class Sink:
    def __init__(self) -> None:
        self.sent: list[float] = []

    async def send(self, pcm: bytes, t: float) -> None:
        self.sent.append(t)


async def silence(clock: Any, seconds: float) -> AsyncIterator[bytes]:
    t0 = clock.now()
    for k, frame in enumerate(frames(np.zeros(int(seconds * SAMPLE_RATE), np.int16))):
        await clock.sleep_until(t0 + (k + 1) * FRAME_S)
        yield frame


async def test_one_calls_failover_bills_only_that_call_to_the_fallback() -> None:
    # Call B's greeting is inside polly when call A's request fails and moves the shared chain to
    # openai. B's segment was spoken by polly and is billed to polly; A's only to openai.
    gate, holding = asyncio.Event(), asyncio.Event()
    pool = ProviderPool(
        _registry(
            {
                "polly": ControlledTTS("polly", gate, holding),
                "openai": ControlledTTS("openai", gate, holding, fails=False),
            }
        )
    )
    clock = RealClock()
    usage: dict[str, list[UsageRecorded]] = {"a": [], "b": []}

    def watch(name: str) -> Any:
        def on(ev: SessionEvent) -> None:
            if isinstance(ev, UsageRecorded) and ev.stage == "tts":
                usage[name].append(ev)

        return on

    def make(name: str, word: str) -> Call:
        call = Call(workflow=WORKFLOW, providers=pool, caller=silence(clock, 0.4), sink=Sink(), clock=clock,
                    user_data={"word": word}, call_id=name)  # fmt: skip
        call.observe(watch(name))
        return call

    b, a = make("b", "HOLD"), make("a", "FAIL")
    try:
        b_run = asyncio.create_task(b.run())
        await holding.wait()
        a_record = await asyncio.create_task(a.run())
        gate.set()
        b_record = await b_run
    finally:
        await pool.aclose()

    def voices(record: Any) -> set[str]:
        return {line.provider for line in record.usage_lines if line.stage == "tts" and line.characters}

    assert voices(a_record) == {"openai"}
    assert voices(b_record) == {"polly"}
    assert [u.served_by for u in usage["b"]] == [0] and all(u.served_by == 1 for u in usage["a"])


async def test_end_from_outside_stops_the_audio_and_records_the_reason() -> None:
    clock = VirtualClock()
    clock.start()
    pool = ProviderPool(_registry({"polly": ToneTTS(3.0)}))
    sink = Sink()
    words = "Good morning and welcome to the front desk of the finest restaurant in the whole town"
    call = Call(workflow=WORKFLOW, providers=pool, caller=silence(clock, 20.0), sink=sink, clock=clock,
                user_data={"word": words})  # fmt: skip
    assert call.snapshot().status == "connecting"
    ended_at: list[float] = []

    async def end_after_half_a_second() -> None:
        while len(sink.sent) < 25:
            await clock.sleep_until(clock.now() + FRAME_S)
        assert call.snapshot().status == "active"
        ended_at.append(clock.now())
        call.end(ENDED_BY_API)

    try:
        ender = asyncio.create_task(end_after_half_a_second())
        record = await asyncio.create_task(call.run())
        await ender
    finally:
        await clock.aclose()
        await pool.aclose()
    assert record.summary is not None and record.summary.reason == ENDED_BY_API
    assert record.status == "completed"
    assert max(sink.sent) <= ended_at[0] + FRAME_S, "agent audio went on after end()"
    assert len(sink.sent) * FRAME_S < 1.0  # of a 3 s greeting
    tts = [line for line in record.usage_lines if line.stage == "tts" and line.characters]
    assert tts, "usage up to the end is kept"
    snap = call.snapshot()
    assert (snap.status, snap.reason, snap.current_agent) == ("completed", ENDED_BY_API, None)
    (said,) = [e for e in snap.transcript if e["role"] == "assistant"]
    assert said["interrupted"] and words.startswith(said["content"]) and len(said["content"]) < len(words) / 2


async def test_an_observer_that_raises_is_detached_and_the_call_goes_on() -> None:
    clock = VirtualClock()
    clock.start()
    pool = ProviderPool(_registry({"polly": ToneTTS(0.3)}))
    calls_to_bad: list[SessionEvent] = []
    seen: list[SessionEvent] = []

    def bad(ev: SessionEvent) -> None:
        calls_to_bad.append(ev)
        raise RuntimeError("dashboard went away")

    call = Call(workflow=WORKFLOW, providers=pool, caller=silence(clock, 2.0), sink=Sink(), clock=clock,
                user_data={"word": "Hi"})  # fmt: skip
    call.observe(bad)
    stop = call.observe(seen.append)
    try:
        record = await asyncio.create_task(call.run())
    finally:
        await clock.aclose()
        await pool.aclose()
    assert len(calls_to_bad) == 1
    assert record.status == "completed" and record.summary is not None
    assert record.summary.reason == "user_ended"
    assert any(isinstance(e, AgentSpeech) for e in seen) and len(seen) > len(calls_to_bad)
    stop()  # stopping after the call is harmless


async def test_a_call_whose_every_turn_failed_is_recorded_as_failed() -> None:
    clock = VirtualClock()
    clock.start()
    gate, holding = asyncio.Event(), asyncio.Event()
    broken = ControlledTTS("polly", gate, holding)
    pool = ProviderPool(_registry({"polly": broken, "openai": broken}))
    call = Call(workflow=WORKFLOW, providers=pool, caller=silence(clock, 1.0), sink=Sink(), clock=clock,
                user_data={"word": "FAIL"})  # fmt: skip
    try:
        record = await asyncio.create_task(call.run())
    finally:
        await clock.aclose()
        await pool.aclose()
    assert record.status == "failed"
    assert record.faults and record.faults[0].startswith("tts:")
    assert call.snapshot().status == "failed"


async def test_a_call_runs_once() -> None:
    clock = VirtualClock()
    clock.start()
    pool = ProviderPool(instant_providers())
    call = Call(workflow=WORKFLOW, providers=pool, caller=silence(clock, 0.2), sink=Sink(), clock=clock,
                user_data={"word": "Hi"})  # fmt: skip
    try:
        await asyncio.create_task(call.run())
        with pytest.raises(RuntimeError, match="already running or has run"):
            await call.run()
    finally:
        await clock.aclose()
        await pool.aclose()
