"""Turn-taking, barge-in, backchannels, metrics and clean-up of VoiceSession, on scripted
providers and the virtual clock (deterministic timelines, no real engines)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import pytest

from pipeline import (
    FRAME_S,
    LLM,
    SAMPLE_RATE,
    TTS,
    AgentSpeech,
    AgentVoice,
    Backchannel,
    CallSummary,
    Dialogue,
    LLMEvent,
    Message,
    PipelineFault,
    SessionConfig,
    SessionEvent,
    TextDelta,
    ToolCall,
    ToolCallRequest,
    ToolOutcome,
    ToolRunner,
    ToolSpec,
    TurnConfig,
    UserTranscript,
    VADConfig,
    VirtualClock,
    VoiceSession,
    frames,
)
from pipeline.testing import ScriptedLLM, ScriptedSTT, ToneTTS, speech_like


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * SAMPLE_RATE), np.int16)


def timeline(*parts: tuple[str, float]) -> np.ndarray:
    """("speech", 1.0), ("silence", 2.0) ... -> caller audio."""
    out = [speech_like(s, seed=i) if kind == "speech" else silence(s) for i, (kind, s) in enumerate(parts)]
    return np.concatenate(out)


@dataclass
class Run:
    events: list[SessionEvent] = field(default_factory=list)
    sent: list[float] = field(default_factory=list)  # start time of each agent frame, call-relative
    pcm: list[bytes] = field(default_factory=list)  # each agent frame
    t0: float = 0.0
    dialogue: Dialogue | None = None

    def of(self, kind: type) -> list:
        return [e for e in self.events if isinstance(e, kind)]


async def run_call(
    audio: np.ndarray,
    transcripts: Sequence[str],
    llm: LLM,
    *,
    tts: TTS | None = None,
    greeting: str | None = None,
    turn: TurnConfig | None = None,
    max_duration_s: float | None = None,
    silence_timeout_s: float | None = None,
    tools: ToolRunner | None = None,
    sessions: list[VoiceSession] | None = None,
) -> tuple[Run, CallSummary]:
    clock = VirtualClock()
    clock.start()
    run = Run()

    class Sink:
        async def send(self, pcm: bytes, t: float) -> None:
            run.sent.append(t - run.t0)
            run.pcm.append(pcm)

    async def caller() -> AsyncIterator[bytes]:
        run.t0 = clock.now()
        for k, frame in enumerate(frames(audio)):
            await clock.sleep_until(run.t0 + (k + 1) * FRAME_S)
            yield frame

    run.dialogue = Dialogue(llm, "You are a test agent.", **({"run_tool": tools} if tools else {}))
    session = VoiceSession(
        stt=await ScriptedSTT(transcripts).connect(),
        tts=tts or ToneTTS(0.2),
        dialogue=run.dialogue,
        sink=Sink(),
        clock=clock,
        config=SessionConfig(
            turn=turn or TurnConfig(), max_duration_s=max_duration_s, silence_timeout_s=silence_timeout_s
        ),
        on_event=run.events.append,
        greeting=greeting,
    )
    if sessions is not None:
        sessions.append(session)
    try:
        summary = await session.run(caller())
    finally:
        await clock.aclose()
    return run, summary


def runs_of_audio(sent: list[float]) -> list[tuple[float, float]]:
    """Contiguous stretches of agent audio as (start, end) seconds."""
    out: list[tuple[float, float]] = []
    for t in sent:
        if out and abs(t - out[-1][1]) < 1e-6 + FRAME_S / 2:
            out[-1] = (out[-1][0], t + FRAME_S)
        else:
            out.append((t, t + FRAME_S))
    return out


async def test_one_turn_per_utterance_and_e2e_is_the_silence_heard() -> None:
    audio = timeline(*[p for _ in range(3) for p in (("speech", 1.0), ("silence", 2.0))])
    run, summary = await run_call(audio, ["one", "two", "three"], ScriptedLLM("Sure thing."))
    assert len(summary.turns) == 3
    assert [e.text for e in run.of(AgentSpeech)] == ["Sure thing."] * 3
    speech_ends = [1.0, 4.0, 7.0]
    for turn, end, (start, _) in zip(summary.turns, speech_ends, runs_of_audio(run.sent), strict=True):
        # What the caller hears: from the end of their speech to the agent's first frame.
        assert turn.e2e_latency_ms == pytest.approx((start - end) * 1000, abs=21)
        assert 300 <= turn.eou_delay_ms <= turn.e2e_latency_ms
        assert turn.stt_latency_ms <= turn.eou_delay_ms
        assert not turn.interrupted
    assert summary.usage.stt_audio_seconds > 3.0
    assert summary.usage.tts_characters == 3 * len("Sure thing.")


async def test_tts_starts_on_the_first_clause_before_the_llm_finishes() -> None:
    release = asyncio.Event()
    seen_by_tts: list[str] = []

    class SlowLLM(LLM):
        name = model = "slow"

        async def chat(
            self, messages: Sequence[Message], tools: Sequence[ToolSpec] = ()
        ) -> AsyncIterator[LLMEvent]:
            yield TextDelta(text="Well, let me think about that, ")
            await release.wait()
            yield TextDelta(text="the answer is forty-two.")

    class WatchingTTS(ToneTTS):
        async def synthesize(self, text: str) -> AsyncIterator[bytes]:
            seen_by_tts.append(text)
            release.set()  # the LLM may only finish once TTS has its first clause
            async for pcm in super().synthesize(text):
                yield pcm

    audio = timeline(("speech", 1.0), ("silence", 3.0))
    await run_call(audio, ["question"], SlowLLM(), tts=WatchingTTS(0.2))
    assert seen_by_tts == ["Well, let me think about that,", "the answer is forty-two."]


async def test_barge_in_stops_agent_within_100ms_and_keeps_only_what_was_heard() -> None:
    long_reply = "This is a long answer. " * 10
    # Reply audio starts ~1.3 s; the caller talks over it from 2.0 s for 1.5 s.
    audio = timeline(("speech", 1.0), ("silence", 1.0), ("speech", 1.5), ("silence", 3.0))
    llm = ScriptedLLM(lambda msgs: long_reply if len(msgs) < 3 else "Okay, go ahead.")
    run, summary = await run_call(audio, ["tell me everything", "wait, stop please"], llm, tts=ToneTTS(1.0))
    onset = 2.0
    first_run = runs_of_audio(run.sent)[0]
    assert first_run[0] < onset < first_run[1] + 1e-9
    assert first_run[1] - onset <= 0.100, f"agent kept talking {first_run[1] - onset:.3f} s over the caller"
    print(f"agent stopped {1000 * (first_run[1] - onset):.0f} ms after the caller's onset")
    assert summary.turns[0].interrupted
    heard = run.of(AgentSpeech)[0]
    assert heard.interrupted and heard.text and long_reply.startswith(heard.text)
    assert len(heard.text) < len(long_reply) / 3
    assistant = [m.content for m in run.dialogue.messages if m.role == "assistant"]
    assert assistant[0] == heard.text  # history holds only the played part
    assert run.dialogue.messages[-2].content == "wait, stop please"
    assert not summary.turns[1].interrupted


async def test_backchannel_over_the_agent_does_not_cut_it_off() -> None:
    reply = "First part of the answer. Second part of the answer. Third part."
    audio = timeline(("speech", 1.0), ("silence", 1.0), ("speech", 0.4), ("silence", 4.0))
    run, summary = await run_call(audio, ["tell me", "uh-huh"], ScriptedLLM(reply), tts=ToneTTS(0.8))
    assert len(summary.turns) == 1 and not summary.turns[0].interrupted
    assert [b.text for b in run.of(Backchannel)] == ["uh-huh"]
    assert run.of(AgentSpeech)[-1].text == reply
    # every segment was played in full: 3 segments x 0.8 s
    assert len(run.sent) * FRAME_S == pytest.approx(2.4, abs=0.05)
    assert [m.content for m in run.dialogue.messages if m.role == "assistant"] == [reply]


async def test_overlap_longer_than_a_backchannel_interrupts_before_the_transcript() -> None:
    audio = timeline(("speech", 1.0), ("silence", 1.0), ("speech", 2.5), ("silence", 3.0))
    turn = TurnConfig(backchannel_max_ms=800)
    run, summary = await run_call(
        audio, ["hi", "uh-huh"], ScriptedLLM("A fairly long reply. " * 8), tts=ToneTTS(1.0), turn=turn
    )
    assert summary.turns[0].interrupted
    assert not run.of(Backchannel)


async def test_speech_before_the_reply_is_heard_merges_into_one_turn() -> None:
    # The caller pauses 350 ms (an endpoint) then goes on; the first reply is held, then dropped.
    audio = timeline(("speech", 1.0), ("silence", 0.35), ("speech", 1.0), ("silence", 3.0))
    slow = asyncio.Event()

    class HoldingLLM(LLM):
        name = model = "holding"

        async def chat(
            self, messages: Sequence[Message], tools: Sequence[ToolSpec] = ()
        ) -> AsyncIterator[LLMEvent]:
            if messages[-1].content == "book a table":
                await slow.wait()  # never released: the caller goes on talking
            yield TextDelta(text=f"You said: {messages[-1].content}.")

    run, _ = await run_call(audio, ["book a table", "for two people"], HoldingLLM())
    users = [m.content for m in run.dialogue.messages if m.role == "user"]
    assert users == ["book a table for two people"]
    assert [e.text for e in run.of(AgentSpeech)] == ["You said: book a table for two people."]


async def test_greeting_plays_first_and_enters_history() -> None:
    audio = timeline(("silence", 3.0), ("speech", 1.0), ("silence", 2.0))
    run, _ = await run_call(audio, ["hi"], ScriptedLLM("Hello!"), greeting="Welcome to the test line.")
    assert run.sent and run.sent[0] == pytest.approx(0.0, abs=0.02)
    assert run.dialogue.messages[1].content == "Welcome to the test line."
    assert [e.text for e in run.of(AgentSpeech)] == ["Welcome to the test line.", "Hello!"]


async def test_tts_audio_cut_mid_sample_plays_aligned_and_a_stray_byte_is_dropped() -> None:
    # The TTS interface allows chunks of any length. An odd first chunk crashed the reply (the
    # leading-silence trim reads samples), and an odd total shifted the next segment by a byte.
    class OddChunkTTS(ToneTTS):
        async def synthesize(self, text: str) -> AsyncIterator[bytes]:
            pcm, i, size = self._pcm, 0, 1
            while i < len(pcm):
                yield pcm[i : i + size]
                i, size = i + size, size + 2  # 1, 3, 5, ... bytes
            yield b"\x7f"  # half a sample, left over

    audio = timeline(("speech", 1.0), ("silence", 2.0))
    odd, _ = await run_call(audio, ["hi"], ScriptedLLM("One. Two."), tts=OddChunkTTS(0.2))
    even, _ = await run_call(audio, ["hi"], ScriptedLLM("One. Two."), tts=ToneTTS(0.2))
    assert odd.of(PipelineFault) == []
    assert odd.pcm == even.pcm and len(odd.pcm) >= 20  # both segments, sample-aligned


async def test_a_failing_llm_is_reported_and_the_call_goes_on() -> None:
    class FlakyLLM(LLM):
        name = model = "flaky"
        calls = 0

        async def chat(
            self, messages: Sequence[Message], tools: Sequence[ToolSpec] = ()
        ) -> AsyncIterator[LLMEvent]:
            self.calls += 1
            if self.calls == 1:
                raise RuntimeError("upstream returned garbage")
            yield TextDelta(text="Working again.")

    audio = timeline(("speech", 1.0), ("silence", 2.0), ("speech", 1.0), ("silence", 2.0))
    run, summary = await run_call(audio, ["a", "b"], FlakyLLM())
    faults = run.of(PipelineFault)
    assert len(faults) == 1 and "garbage" in faults[0].error and faults[0].stage == "llm"
    assert [e.text for e in run.of(AgentSpeech)] == ["Working again."]
    assert summary.reason == "user_ended"


async def test_end_call_tool_ends_the_call_after_the_line_is_played() -> None:
    class ByeLLM(LLM):
        name = model = "bye"

        async def chat(
            self, messages: Sequence[Message], tools: Sequence[ToolSpec] = ()
        ) -> AsyncIterator[LLMEvent]:
            if messages[-1].role == "user":
                yield TextDelta(text="Goodbye now.")
                yield ToolCallRequest(call=ToolCall("c1", "end_call", {}))

    async def tools(call: ToolCall) -> ToolOutcome:
        return ToolOutcome({"ok": True}, end_call=call.name == "end_call")

    audio = timeline(("speech", 1.0), ("silence", 10.0))
    run, summary = await run_call(audio, ["bye"], ByeLLM(), tts=ToneTTS(0.5), tools=tools)
    assert summary.reason == "agent_ended"
    assert summary.duration_s < 3.0
    assert run.of(AgentSpeech)[0].text == "Goodbye now."


async def test_max_duration_ends_the_call() -> None:
    audio = timeline(("silence", 30.0))
    _, summary = await run_call(audio, ["x"], ScriptedLLM("x"), max_duration_s=5.0)
    assert summary.reason == "max_duration"
    assert summary.duration_s == pytest.approx(5.0, abs=0.05)


async def test_an_open_line_gets_one_check_in_then_ends_for_silence() -> None:
    audio = timeline(("speech", 1.0), ("silence", 60.0))
    run, summary = await run_call(audio, ["hello"], ScriptedLLM("Hi there."), silence_timeout_s=10.0)
    assert [e.text for e in run.of(AgentSpeech)] == ["Hi there.", "Are you still there?"]
    assert summary.reason == "silence_timeout"
    check_in, _ = runs_of_audio(run.sent)[1]
    reply_end = runs_of_audio(run.sent)[0][1]
    assert check_in == pytest.approx(reply_end + 10.0, abs=0.1)  # silence counts from the reply's end
    assert summary.duration_s == pytest.approx(runs_of_audio(run.sent)[1][1] + 10.0, abs=0.1)


async def test_a_caller_who_answers_the_check_in_keeps_the_call() -> None:
    audio = timeline(("speech", 1.0), ("silence", 12.0), ("speech", 1.0), ("silence", 8.0), ("speech", 1.0),
                     ("silence", 3.0))  # fmt: skip
    run, summary = await run_call(
        audio, ["hello", "yes", "bye"], ScriptedLLM("Okay."), silence_timeout_s=10.0
    )
    assert [e.text for e in run.of(AgentSpeech)] == ["Okay.", "Are you still there?", "Okay.", "Okay."]
    assert summary.reason == "user_ended"  # the recording ended: the line was never left silent again


async def test_hang_up_mid_reply_leaves_no_task_behind() -> None:
    audio = timeline(("speech", 1.0), ("silence", 5.0))
    clock = VirtualClock()
    clock.start()
    before = asyncio.all_tasks()
    sent: list[float] = []

    class HangingUpSink:
        async def send(self, pcm: bytes, t: float) -> None:
            sent.append(t)
            if len(sent) == 10:
                session.end("caller_hangup")

    async def caller() -> AsyncIterator[bytes]:
        t0 = clock.now()
        for k, frame in enumerate(frames(audio)):
            await clock.sleep_until(t0 + (k + 1) * FRAME_S)
            yield frame

    session = VoiceSession(
        stt=await ScriptedSTT(["hi"]).connect(), tts=ToneTTS(3.0),
        dialogue=Dialogue(ScriptedLLM("A reply still playing when the caller leaves."), ""),
        sink=HangingUpSink(), clock=clock,
    )  # fmt: skip
    summary = await session.run(caller())
    await clock.aclose()
    assert summary.reason == "caller_hangup"
    assert len(sent) == 10
    leftover = {t for t in asyncio.all_tasks() - before if not t.done()}
    assert leftover == set()


async def test_a_handoff_switches_to_the_new_agents_voice_ears_and_turn_taking() -> None:
    class TransferringLLM(LLM):
        name = model = "transferring"

        async def chat(
            self, messages: Sequence[Message], tools: Sequence[ToolSpec] = ()
        ) -> AsyncIterator[LLMEvent]:
            if messages[-1].role == "user" and messages[-1].content == "from a":
                yield TextDelta(text="Let me transfer you.")
                yield ToolCallRequest(call=ToolCall("t1", "transfer_to_b", {}))
            elif messages[-1].role == "user":
                yield TextDelta(text="Hello from b.")

    async def tools(call: ToolCall) -> ToolOutcome:
        return ToolOutcome({"ok": True}, handoff="b")

    clock = VirtualClock()
    clock.start()
    sent: list[float] = []
    events: list[SessionEvent] = []

    class Sink:
        async def send(self, pcm: bytes, t: float) -> None:
            sent.append(t)

    audio = timeline(("speech", 1.0), ("silence", 3.0), ("speech", 1.0), ("silence", 3.0))

    async def caller() -> AsyncIterator[bytes]:
        t0 = clock.now()
        for k, frame in enumerate(frames(audio)):
            await clock.sleep_until(t0 + (k + 1) * FRAME_S)
            yield frame

    voice_b = AgentVoice(
        stt=await ScriptedSTT(["from b"]).connect(),
        tts=ToneTTS(0.6),
        turn=TurnConfig(vad=VADConfig(end_silence_ms=600)),
    )
    session = VoiceSession(
        stt=await ScriptedSTT(["from a"]).connect(), tts=ToneTTS(0.2),
        dialogue=Dialogue(TransferringLLM(), "", run_tool=tools), sink=Sink(), clock=clock,
        on_event=events.append, voices=lambda agent: voice_b,
    )  # fmt: skip
    summary = await session.run(caller())
    await clock.aclose()

    replies = runs_of_audio(sent)
    assert [round(end - start, 2) for start, end in replies] == [0.2, 0.6]  # a's voice, then b's
    users = [e.text for e in events if isinstance(e, UserTranscript) and e.final]
    assert users == ["from a", "from b"]  # b's STT heard the second utterance
    assert summary.turns[1].eou_delay_ms == pytest.approx(600, abs=25)  # b's endpointing
    assert summary.turns[0].eou_delay_ms == pytest.approx(300, abs=25)
