"""LiveKit Agents' AgentSession on the overhead workload, without a LiveKit server.

The caller is an io.AudioInput and the sink an io.AudioOutput, set on session.input/output before
start() (with neither a room nor the console, the session uses what it was given). STT, LLM, TTS
and VAD are fakes written against livekit-agents' own base classes and answer at once:

- VAD: the workload's level detector (speech after 60 ms voiced, end after 300 ms silent), emitting
  INFERENCE_DONE for every frame as Silero does, and START/END_OF_SPEECH.
- STT: a streaming STT with manual_flush, so the session flushes it at the VAD's end of speech;
  the flush returns the final transcript at once.
- LLM: three chunks of "It is noon. Anything else?" at once.
- TTS: non-streaming; the session wraps it in its own StreamAdapter (sentence tokenizer), and each
  sentence is 200 ms of tone at once.

Run by `python -m bench.peers` under this peer's own venv: `--calls N`, prints one JSON object.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import workload
from livekit import rtc
from livekit.agents import (
    DEFAULT_API_CONNECT_OPTIONS,
    NOT_GIVEN,
    Agent,
    AgentSession,
    APIConnectOptions,
    LanguageCode,
    NotGivenOr,
    __version__,
    llm,
    stt,
    tts,
    utils,
    vad,
)
from livekit.agents.voice import io
from livekit.agents.voice.turn import TurnHandlingOptions

# Everything that could add a delay of its own between end of speech and the reply, set to none.
TURN_HANDLING: TurnHandlingOptions = {
    # The VAD's end of speech ends the turn: no end-of-turn model.
    "turn_detection": "vad",
    # min_delay: the wait after end of speech before the turn is committed (default 0.5 s).
    "endpointing": {"mode": "fixed", "min_delay": 0.0},
    # Plain VAD barge-in (the default may ask LiveKit Inference for an adaptive detector); the
    # sink cannot pause, so resuming after a false interruption would be ignored with a warning.
    "interruption": {"mode": "vad", "resume_false_interruption": False},
}


class InstantVAD(vad.VAD):
    def __init__(self) -> None:
        super().__init__(capabilities=vad.VADCapabilities(update_interval=workload.FRAME_S))

    def stream(self) -> vad.VADStream:
        return InstantVADStream(self)


class InstantVADStream(vad.VADStream):
    """Publishes as Silero's stream does: INFERENCE_DONE for every window, the speech duration
    growing from START_OF_SPEECH (trailing silence included) and back to 0 at END_OF_SPEECH, the
    silence duration growing while not speaking. The session interrupts the agent on an
    INFERENCE_DONE whose speech duration passes min_interruption_duration, so this matters."""

    async def _main_task(self) -> None:
        detector = workload.SpeechDetector()
        samples = 0
        speech_s = silence_s = 0.0
        async for item in self._input_ch:
            if isinstance(item, self._FlushSentinel):
                detector.reset()  # a flush is a hard segment boundary (VADStream.flush)
                speech_s = silence_s = 0.0
                continue
            samples += item.samples_per_channel
            was_speaking = detector.speaking
            if was_speaking:
                speech_s += item.duration
            else:
                silence_s += item.duration
            change = detector.push(item.data, item.duration)
            self._send(vad.VADEventType.INFERENCE_DONE, samples, speech_s, silence_s, was_speaking, detector)
            if change == "start":
                speech_s, silence_s = detector.voiced_run_s, 0.0
                self._send(vad.VADEventType.START_OF_SPEECH, samples, speech_s, silence_s, True, detector)
            elif change == "end":
                speech_s, silence_s = 0.0, detector.silent_run_s
                self._send(vad.VADEventType.END_OF_SPEECH, samples, speech_s, silence_s, False, detector)

    def _send(
        self,
        kind: vad.VADEventType,
        samples: int,
        speech_s: float,
        silence_s: float,
        speaking: bool,
        detector: workload.SpeechDetector,
    ) -> None:
        self._event_ch.send_nowait(
            vad.VADEvent(
                type=kind,
                samples_index=samples,
                timestamp=samples / workload.SAMPLE_RATE,
                speech_duration=speech_s,
                silence_duration=silence_s,
                probability=1.0 if detector.silent_run_s == 0.0 else 0.0,
                speaking=speaking,
                raw_accumulated_speech=detector.voiced_run_s,
                raw_accumulated_silence=detector.silent_run_s,
            )
        )


class InstantSTT(stt.STT):
    def __init__(self) -> None:
        super().__init__(
            capabilities=stt.STTCapabilities(streaming=True, interim_results=False, manual_flush=True)
        )

    async def _recognize_impl(self, buffer: Any, *, language: Any, conn_options: Any) -> stt.SpeechEvent:
        return _final_transcript()

    def stream(
        self,
        *,
        language: NotGivenOr[str] = NOT_GIVEN,
        conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS,
    ) -> stt.RecognizeStream:
        return InstantRecognizeStream(stt=self, conn_options=conn_options)


class InstantRecognizeStream(stt.RecognizeStream):
    async def _run(self) -> None:
        async for item in self._input_ch:
            if isinstance(item, self._FlushSentinel):
                self._event_ch.send_nowait(_final_transcript())


def _final_transcript() -> stt.SpeechEvent:
    return stt.SpeechEvent(
        type=stt.SpeechEventType.FINAL_TRANSCRIPT,
        alternatives=[stt.SpeechData(language=LanguageCode("en"), text=workload.TRANSCRIPT, confidence=1.0)],
    )


class InstantLLM(llm.LLM):
    def chat(
        self, *, chat_ctx: llm.ChatContext, tools: Any = None, conn_options: Any = None, **_: Any
    ) -> llm.LLMStream:
        return InstantLLMStream(
            self,
            chat_ctx=chat_ctx,
            tools=tools or [],
            conn_options=conn_options or DEFAULT_API_CONNECT_OPTIONS,
        )


class InstantLLMStream(llm.LLMStream):
    async def _run(self) -> None:
        request_id = utils.shortuuid()
        for chunk in workload.reply_chunks():
            self._event_ch.send_nowait(
                llm.ChatChunk(id=request_id, delta=llm.ChoiceDelta(role="assistant", content=chunk))
            )


class InstantTTS(tts.TTS):
    def __init__(self) -> None:
        super().__init__(
            capabilities=tts.TTSCapabilities(streaming=False),
            sample_rate=workload.SAMPLE_RATE,
            num_channels=1,
        )
        self.pcm = workload.tone()

    def synthesize(
        self, text: str, *, conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS
    ) -> tts.ChunkedStream:
        return InstantChunkedStream(tts=self, input_text=text, conn_options=conn_options)


class InstantChunkedStream(tts.ChunkedStream):
    async def _run(self, output_emitter: tts.AudioEmitter) -> None:
        assert isinstance(self._tts, InstantTTS)
        output_emitter.initialize(
            request_id=utils.shortuuid(),
            sample_rate=workload.SAMPLE_RATE,
            num_channels=1,
            mime_type="audio/pcm",
        )
        output_emitter.push(self._tts.pcm)


class CallerInput(io.AudioInput):
    """The caller's frames as the session's microphone."""

    def __init__(self, caller: workload.Caller) -> None:
        super().__init__(label="bench-caller")
        self._frames = caller.frames()

    async def __anext__(self) -> rtc.AudioFrame:
        try:
            pcm = await self._frames.__anext__()
        except StopAsyncIteration:
            # A phone line stays open after the caller's last word; the session is closed next.
            await asyncio.Future()
        return rtc.AudioFrame(pcm, workload.SAMPLE_RATE, 1, workload.FRAME_SAMPLES)


class ReplySink(io.AudioOutput):
    """Takes the reply audio as a room's speaker would: the first frame after a turn is timed,
    and playback is reported finished once the audio's duration has passed in real time."""

    def __init__(self, caller: workload.Caller) -> None:
        super().__init__(label="bench-sink", capabilities=io.AudioOutputCapabilities(pause=False))
        self._caller = caller
        self._loop = asyncio.get_running_loop()
        self._segment_s = 0.0
        self._started_at = 0.0
        self._finish: asyncio.TimerHandle | None = None

    async def capture_frame(self, frame: rtc.AudioFrame) -> None:
        await super().capture_frame(frame)
        self._caller.reply_audio()
        if not self._segment_s:
            self._started_at = self._loop.time()
            self.on_playback_started(created_at=time.time())
        self._segment_s += frame.duration

    def flush(self) -> None:
        super().flush()
        if not self._segment_s:
            return
        played_s = self._segment_s

        def finished() -> None:
            self._segment_s = 0.0
            self._finish = None
            self.on_playback_finished(playback_position=played_s, interrupted=False)

        remaining = self._segment_s - (self._loop.time() - self._started_at)
        self._finish = self._loop.call_later(max(0.0, remaining), finished)

    def clear_buffer(self) -> None:
        if not self._segment_s:
            return
        if self._finish is not None:
            self._finish.cancel()
            self._finish = None
        played_s = min(self._segment_s, self._loop.time() - self._started_at)
        self._segment_s = 0.0
        self.on_playback_finished(playback_position=played_s, interrupted=True)


async def one_call(caller: workload.Caller) -> None:
    session: AgentSession[None] = AgentSession(
        stt=InstantSTT(),
        vad=InstantVAD(),
        llm=InstantLLM(),
        tts=InstantTTS(),
        turn_handling=TURN_HANDLING,
        user_away_timeout=None,
    )
    session.input.audio = CallerInput(caller)
    session.output.audio = ReplySink(caller)
    await session.start(Agent(instructions="Bench."), record=False)
    try:
        await caller.done.wait()
    finally:
        await session.aclose()


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    workload.main("livekit-agents", __version__, one_call)
