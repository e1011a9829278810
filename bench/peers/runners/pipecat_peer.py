"""Pipecat on the overhead workload: a Pipeline of a fake transport, STT, the user context
aggregator (which runs the VAD and the turn strategies), LLM, TTS, the transport's output and the
assistant aggregator, one PipelineWorker and WorkerRunner per call, as a Pipecat server runs a bot
per session. The fakes are written against Pipecat's own base classes and answer at once:

- transport: BaseInputTransport fed by the caller at real-time pace; BaseOutputTransport whose
  write_audio_frame() times the first reply frame and paces playout like a sound card.
- VAD: a VADAnalyzer whose confidence is the workload's level test; Pipecat's own state machine
  (VADParams start_secs 0.06, stop_secs 0.3) decides when speech starts and stops.
- STT: an STTService that pushes a finalized transcript the moment the VAD says speech stopped,
  as a streaming STT does on finalize.
- LLM: an LLMService that streams three chunks of "It is noon. Anything else?" at once.
- TTS: a TTSService (the base class aggregates sentences) giving 200 ms of tone per sentence.

Run by `python -m bench.peers` under this peer's own venv: `--calls N`, prints one JSON object.
"""

from __future__ import annotations

import asyncio
import dataclasses
import sys
from collections.abc import AsyncGenerator
from importlib.metadata import version
from typing import TypeVar

import workload
from loguru import logger
from pipecat.audio.vad.vad_analyzer import VADAnalyzer, VADParams
from pipecat.frames.frames import (
    CancelFrame,
    EndFrame,
    Frame,
    InputAudioRawFrame,
    LLMContextFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    OutputAudioRawFrame,
    StartFrame,
    TranscriptionFrame,
    TTSAudioRawFrame,
    VADUserStoppedSpeakingFrame,
)
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.processors.aggregators.llm_response_universal import (
    LLMContextAggregatorPair,
    LLMUserAggregatorParams,
)
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.services.llm_service import LLMService
from pipecat.services.settings import LLMSettings, ServiceSettings, STTSettings, TTSSettings
from pipecat.services.stt_service import STTService
from pipecat.services.tts_service import TTSService
from pipecat.transports.base_input import BaseInputTransport
from pipecat.transports.base_output import BaseOutputTransport
from pipecat.transports.base_transport import BaseTransport, TransportParams
from pipecat.turns.user_stop import SpeechTimeoutUserTurnStopStrategy
from pipecat.turns.user_turn_strategies import UserTurnStrategies
from pipecat.utils.time import time_now_iso8601
from pipecat.utils.types import is_given
from pipecat.workers.runner import WorkerRunner

# Same endpointing as voicerun: speech after 60 ms voiced, end after 300 ms silent. min_volume 0
# leaves the decision to the level test (Pipecat's volume gate is a second, loudness-based test).
VAD_PARAMS = VADParams(confidence=0.5, start_secs=workload.START_VOICED_S, stop_secs=0.3, min_volume=0.0)


def turn_strategies() -> UserTurnStrategies:
    # The default stop strategy runs the Smart Turn model; the speech-timeout one with
    # user_speech_timeout=0 ends the turn at the VAD's stop once a transcript is in.
    return UserTurnStrategies(stop=[SpeechTimeoutUserTurnStopStrategy(user_speech_timeout=0.0)])


S = TypeVar("S", bound=ServiceSettings)


def no_settings(cls: type[S]) -> S:
    """A service's settings with every field it has no use for set to None, as Pipecat asks."""
    settings = cls()
    for f in dataclasses.fields(settings):
        if f.name != "extra" and not is_given(getattr(settings, f.name)):
            setattr(settings, f.name, None)
    return settings


class LevelVADAnalyzer(VADAnalyzer):
    def num_frames_required(self) -> int:
        return workload.FRAME_SAMPLES

    def voice_confidence(self, buffer: bytes) -> float:
        return 1.0 if workload.is_voiced(buffer) else 0.0


class InstantSTTService(STTService):
    def __init__(self) -> None:
        # ttfs_p99_latency=0: the transcript is final the moment speech stops, so the turn
        # strategy has no STT latency to wait out after the VAD's stop.
        super().__init__(ttfs_p99_latency=0.0, settings=no_settings(STTSettings))

    async def run_stt(self, audio: bytes) -> AsyncGenerator[Frame | None, None]:
        yield None

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, VADUserStoppedSpeakingFrame):
            await self.push_frame(
                TranscriptionFrame(workload.TRANSCRIPT, "", time_now_iso8601(), finalized=True)
            )


class InstantLLMService(LLMService):
    def __init__(self) -> None:
        super().__init__(settings=no_settings(LLMSettings))

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, LLMContextFrame):
            await self.push_frame(LLMFullResponseStartFrame())
            for chunk in workload.reply_chunks():
                await self._push_llm_text(chunk)
            await self.push_frame(LLMFullResponseEndFrame())
        else:
            await self.push_frame(frame, direction)


class InstantTTSService(TTSService):
    def __init__(self) -> None:
        super().__init__(
            sample_rate=workload.SAMPLE_RATE,
            push_start_frame=True,
            push_stop_frames=True,
            settings=no_settings(TTSSettings),
        )
        self._pcm = workload.tone()

    async def run_tts(self, text: str, context_id: str) -> AsyncGenerator[Frame | None, None]:
        yield TTSAudioRawFrame(self._pcm, workload.SAMPLE_RATE, 1, context_id=context_id)


class CallerInputTransport(BaseInputTransport):
    def __init__(self, caller: workload.Caller, params: TransportParams) -> None:
        super().__init__(params)
        self._caller = caller
        self._feed: asyncio.Task[None] | None = None

    async def start(self, frame: StartFrame) -> None:
        await super().start(frame)
        await self.set_transport_ready(frame)
        self._feed = self.create_task(self._feed_caller())

    async def _feed_caller(self) -> None:
        async for pcm in self._caller.frames():
            await self.push_audio_frame(InputAudioRawFrame(pcm, workload.SAMPLE_RATE, 1))

    async def stop(self, frame: EndFrame) -> None:
        await self._stop_feed()
        await super().stop(frame)

    async def cancel(self, frame: CancelFrame) -> None:
        await self._stop_feed()
        await super().cancel(frame)

    async def _stop_feed(self) -> None:
        if self._feed is not None:
            await self.cancel_task(self._feed)
            self._feed = None


class ReplySinkTransport(BaseOutputTransport):
    def __init__(self, caller: workload.Caller, params: TransportParams) -> None:
        super().__init__(params)
        self._caller = caller
        self._playout_until = 0.0

    async def start(self, frame: StartFrame) -> None:
        await super().start(frame)
        await self.set_transport_ready(frame)

    async def write_audio_frame(self, frame: OutputAudioRawFrame) -> bool:
        if isinstance(frame, TTSAudioRawFrame):
            self._caller.reply_audio()
        # A sound card takes audio at real time: the next chunk waits for this one to play.
        loop = asyncio.get_running_loop()
        now = loop.time()
        if self._playout_until > now:
            await asyncio.sleep(self._playout_until - now)
        duration = len(frame.audio) / 2 / frame.sample_rate / frame.num_channels
        self._playout_until = max(now, self._playout_until) + duration
        return True


class CallerTransport(BaseTransport):
    def __init__(self, caller: workload.Caller) -> None:
        super().__init__()
        params = TransportParams(audio_in_enabled=True, audio_out_enabled=True)
        self._input = CallerInputTransport(caller, params)
        self._output = ReplySinkTransport(caller, params)

    def input(self) -> FrameProcessor:
        return self._input

    def output(self) -> FrameProcessor:
        return self._output


async def one_call(caller: workload.Caller) -> None:
    transport = CallerTransport(caller)
    context = LLMContext([{"role": "system", "content": "Bench."}])
    aggregators = LLMContextAggregatorPair(
        context,
        user_params=LLMUserAggregatorParams(
            vad_analyzer=LevelVADAnalyzer(params=VAD_PARAMS), user_turn_strategies=turn_strategies()
        ),
    )
    pipeline = Pipeline(
        [
            transport.input(),
            InstantSTTService(),
            aggregators.user(),
            InstantLLMService(),
            InstantTTSService(),
            transport.output(),
            aggregators.assistant(),
        ]
    )
    worker = PipelineWorker(
        pipeline,
        params=PipelineParams(
            audio_in_sample_rate=workload.SAMPLE_RATE, audio_out_sample_rate=workload.SAMPLE_RATE
        ),
    )
    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(worker)
    running = asyncio.create_task(runner.run())
    try:
        await caller.done.wait()
    finally:
        # Cancel rather than end: an EndFrame makes the output play 2 s of closing silence.
        await worker.cancel()
        await running


if __name__ == "__main__":
    logger.remove()  # loguru logs every frame event at DEBUG to stderr by default
    logger.add(sys.stderr, level="WARNING")
    workload.main("pipecat-ai", version("pipecat-ai"), one_call)
