"""What a transport needs of a session shared with many calls: frames stamped with their arrival,
a sink with its own queue that is stopped and cleared on a barge-in, faults that name their stage,
transcripts committed in the order they were spoken, and a call whose every turn failed."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Sequence

import numpy as np
import pytest
from test_session import run_call, timeline

from pipeline import (
    FRAME_S,
    LLM,
    STT,
    TTS,
    BufferedSink,
    Dialogue,
    InterimCallback,
    LLMEvent,
    Message,
    PipelineFault,
    RealClock,
    SessionConfig,
    STTSession,
    TextDelta,
    ToolSpec,
    Transcript,
    TurnConfig,
    UserTranscript,
    Utterance,
    VirtualClock,
    VoiceSession,
    frames,
)
from pipeline.testing import ScriptedLLM, ScriptedSTT, ToneTTS


class JitterBufferSink:
    """A room's audio source, as the session sees it: frames handed over play `delay_s` later,
    from a queue of its own. `heard` is what the caller hears, by the time it is heard."""

    def __init__(self, clock: VirtualClock, delay_s: float) -> None:
        self._clock = clock
        self._delay_s = delay_s
        self._queue: deque[tuple[float, bytes]] = deque()
        self._paused_at: float | None = None
        self.heard: list[float] = []
        self.cleared = 0

    async def send(self, pcm: bytes, t: float) -> None:
        self._queue.append((t + self._delay_s, pcm))

    def pause(self) -> None:
        self._paused_at = self._clock.now()

    def resume(self) -> None:
        if self._paused_at is not None:
            held = self._clock.now() - self._paused_at
            self._queue = deque((t + held, pcm) for t, pcm in self._queue)
            self._paused_at = None

    def clear(self) -> None:
        self._queue.clear()
        self.cleared += 1

    async def play(self) -> None:
        while True:
            await self._clock.sleep_until(self._clock.now() + FRAME_S)
            while self._paused_at is None and self._queue and self._queue[0][0] <= self._clock.now():
                t, _ = self._queue.popleft()
                self.heard.append(t)


async def test_a_barge_in_stops_what_the_sinks_own_queue_holds() -> None:
    # The sink plays each frame 200 ms after it gets it. Without clear(), the caller would hear
    # 200 ms of the reply after the session stopped sending.
    clock = VirtualClock()
    clock.start()
    sink = JitterBufferSink(clock, delay_s=0.2)
    assert isinstance(sink, BufferedSink)
    audio = timeline(("speech", 1.0), ("silence", 1.0), ("speech", 1.5), ("silence", 3.0))
    llm = ScriptedLLM(lambda msgs: "This is a long answer. " * 8 if len(msgs) < 3 else "Okay.")
    session = VoiceSession(
        stt=await ScriptedSTT(["tell me everything", "stop, I want a human"]).connect(),
        tts=ToneTTS(1.0),
        dialogue=Dialogue(llm, "Test."),
        sink=sink,
        clock=clock,
    )
    t0 = clock.now()

    async def caller() -> AsyncIterator[bytes]:
        for k, frame in enumerate(frames(audio)):
            await clock.sleep_until(t0 + (k + 1) * FRAME_S)
            yield frame

    player = asyncio.create_task(sink.play())
    try:
        summary = await session.run(caller())
    finally:
        player.cancel()
        await clock.aclose()
    onset = t0 + 2.0
    heard_after_onset = [t for t in sink.heard if onset + 0.1 < t < onset + 1.8]
    assert not heard_after_onset, f"the caller heard {len(heard_after_onset)} frames after the cut"
    assert sink.cleared >= 1 and summary.turns[0].interrupted


async def test_latency_starts_when_the_frame_arrived_not_when_it_was_processed() -> None:
    # A loaded loop: every frame reaches the session 60 ms after it arrived at the transport,
    # which stamped it. The turn's e2e is the silence the caller heard, lateness included.
    clock = VirtualClock()
    clock.start()
    sent: list[float] = []

    class Sink:
        async def send(self, pcm: bytes, t: float) -> None:
            sent.append(t)

    audio = timeline(("speech", 1.0), ("silence", 2.0))
    session = VoiceSession(
        stt=await ScriptedSTT(["what time is it"]).connect(),
        tts=ToneTTS(0.2),
        dialogue=Dialogue(ScriptedLLM("It is noon."), "Test."),
        sink=Sink(),
        clock=clock,
        config=SessionConfig(turn=TurnConfig()),
    )
    t0 = clock.now()

    async def late_caller() -> AsyncIterator[tuple[bytes, float]]:
        for k, frame in enumerate(frames(audio)):
            arrived = t0 + (k + 1) * FRAME_S
            await clock.sleep_until(arrived + 0.060)
            yield frame, arrived

    try:
        summary = await session.run(late_caller())
    finally:
        await clock.aclose()
    speech_end = t0 + 1.0
    heard_silence_ms = (sent[0] - speech_end) * 1000
    (turn,) = summary.turns
    assert turn.e2e_latency_ms == pytest.approx(heard_silence_ms, abs=FRAME_S * 1000 + 1)
    assert heard_silence_ms >= 300 + 60


class FailingTTS(TTS):
    name = model = "failing"

    async def synthesize(self, text: str) -> AsyncIterator[bytes]:
        raise RuntimeError("synthesizer crashed")
        yield b""


class FailsAfterFirstClause(LLM):
    """Streams one clause, which reaches the TTS, then fails before any audio has played."""

    name = model = "half"

    async def chat(
        self, messages: Sequence[Message], tools: Sequence[ToolSpec] = ()
    ) -> AsyncIterator[LLMEvent]:
        yield TextDelta(text="Let me check that for you. ")
        await asyncio.sleep(0)
        raise RuntimeError("connection reset mid-stream")


async def test_each_fault_names_the_stage_that_failed() -> None:
    audio = timeline(("speech", 1.0), ("silence", 2.0))
    run, _ = await run_call(audio, ["hello"], ScriptedLLM("Hi there."), tts=FailingTTS())
    assert [(f.stage, f.error) for f in run.of(PipelineFault)] == [("tts", "synthesizer crashed")]
    run, _ = await run_call(audio, ["hello"], FailsAfterFirstClause(), tts=ToneTTS(2.0))
    assert [(f.stage, f.error) for f in run.of(PipelineFault)] == [("llm", "connection reset mid-stream")]


async def test_a_call_whose_every_turn_failed_is_a_failed_call() -> None:
    audio = timeline(("speech", 1.0), ("silence", 2.0), ("speech", 1.0), ("silence", 2.0))
    _, summary = await run_call(audio, ["hello", "anyone?"], ScriptedLLM("Hi."), tts=FailingTTS())
    assert summary.turns_failed == 2 and summary.failed
    _, summary = await run_call(audio, ["hello", "anyone?"], ScriptedLLM("Hi."))
    assert summary.turns_failed == 0 and not summary.failed

    class FailsOnce(LLM):
        name = model = "once"
        calls = 0

        async def chat(
            self, messages: Sequence[Message], tools: Sequence[ToolSpec] = ()
        ) -> AsyncIterator[LLMEvent]:
            self.calls += 1
            if self.calls == 1:
                raise RuntimeError("503")
            yield TextDelta(text="Sorry about that, I am here.")

    _, summary = await run_call(audio, ["hello", "anyone?"], FailsOnce())
    assert summary.turns_failed == 1 and not summary.failed


class _HeldUtterance(Utterance):
    def __init__(self, text: str, release: asyncio.Event | None, finalizing: asyncio.Event) -> None:
        self._text = text
        self._release = release
        self._finalizing = finalizing

    def push(self, pcm: bytes, voiced: bool) -> None:
        pass

    async def finalize(self) -> Transcript:
        self._finalizing.set()
        if self._release is not None:
            await self._release.wait()
        return Transcript(self._text, 1.0)

    def cancel(self) -> None:
        pass


class FirstTranscriptLate(STT):
    """The first utterance's transcript is held until the second utterance is being finalized:
    the second is ready first."""

    name = model = "late"

    async def connect(self) -> STTSession:
        second_finalizing = asyncio.Event()
        first_finalizing = asyncio.Event()
        texts = iter(["first words", "second words"])

        class Session(STTSession):
            def begin(self, on_interim: InterimCallback | None = None) -> Utterance:
                text = next(texts)
                if text == "first words":
                    return _HeldUtterance(text, second_finalizing, first_finalizing)
                return _HeldUtterance(text, None, second_finalizing)

        return Session()


async def test_transcripts_commit_in_the_order_they_were_spoken() -> None:
    # Frames are stamped and fed as fast as the session takes them (a transport's backlog), so
    # the second utterance ends while the first one's transcript is still pending.
    audio = timeline(("speech", 1.0), ("silence", 0.5), ("speech", 1.0), ("silence", 1.0))
    clock = RealClock()
    events: list[object] = []
    seen: list[str] = []

    def reply(messages: Sequence[Message]) -> str:
        seen.append(messages[-1].content)
        return "Okay."

    session = VoiceSession(
        stt=await FirstTranscriptLate().connect(),
        tts=ToneTTS(0.02),
        dialogue=Dialogue(ScriptedLLM(reply), "Test."),
        sink=_NullSink(),
        clock=clock,
        on_event=events.append,
    )
    t0 = clock.now()

    async def backlog() -> AsyncIterator[tuple[bytes, float]]:
        for k, frame in enumerate(frames(audio)):
            yield frame, t0 + (k + 1) * FRAME_S
            await asyncio.sleep(0)

    await session.run(backlog())
    finals = [e.text for e in events if isinstance(e, UserTranscript) and e.final]
    assert finals == ["first words", "second words"]
    assert " ".join(seen).index("first words") < " ".join(seen).rindex("second words")


class _NullSink:
    async def send(self, pcm: bytes, t: float) -> None:
        pass


def test_a_plain_sink_is_not_a_buffered_one() -> None:
    assert not isinstance(_NullSink(), BufferedSink)
    assert np.int16  # numpy is the audio type of the helpers imported above
