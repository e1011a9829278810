"""WhisperSTT with the real tiny.en model on speech synthesized by HibariTTS.

What a caller of the pipeline relies on: the words come back, a pause lets finalize() reuse work
already done, speech after a pause is not lost, silence gives no invented words, interims arrive
while the caller speaks, and cancelled work leaves nothing behind.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import re
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

import jiwer
import numpy as np
import pytest
import pytest_asyncio
from structlog.testing import capture_logs

from pipeline import FRAME_BYTES, FRAME_S, ProviderError, VADConfig, VirtualClock, frames
from pipeline._vad import Endpointer
from pipeline.providers import WhisperConfig, WhisperSTT, WhisperUtterance


class SpeechSample(Protocol):  # the conftest's speech_samples items
    text: str
    pcm: bytes


SILENT_FRAME = bytes(FRAME_BYTES)
MAX_WER = 0.25
NO_INTERIMS = WhisperConfig(interim_interval_s=0)


def speech_frames(pcm: bytes) -> list[bytes]:
    return list(frames(np.frombuffer(pcm, "<i2")))


def silence(seconds: float) -> list[bytes]:
    return [SILENT_FRAME] * round(seconds / FRAME_S)


def words(text: str) -> str:
    return " ".join(re.sub(r"[^a-z0-9']+", " ", text.lower()).split())


def wer(references: Sequence[str], hypotheses: Sequence[str]) -> float:
    return float(jiwer.wer([words(r) for r in references], [words(h) or "<empty>" for h in hypotheses]))


def push_all(utterance: WhisperUtterance, pcm_frames: Iterable[bytes], voiced: bool) -> None:
    for frame in pcm_frames:
        utterance.push(frame, voiced)


def push_with_vad(utterance: WhisperUtterance, pcm: bytes) -> None:
    """As the session does: 0.3 s of lead-in, speech with per-frame VAD flags, 0.3 s endpoint silence."""
    vad = Endpointer(VADConfig())
    for frame in [*silence(0.3), *speech_frames(pcm), *silence(0.3)]:
        utterance.push(frame, vad.is_voiced(frame))


@pytest_asyncio.fixture
async def drain_executor() -> AsyncIterator[Callable[[], Awaitable[None]]]:
    """A one-thread default executor, and a drain that returns once all work handed to it ended.

    Lets a test see what abandoned decodes do when they finish, without waiting on time.
    """
    loop = asyncio.get_running_loop()
    executor = ThreadPoolExecutor(max_workers=1)
    loop.set_default_executor(executor)

    async def drain() -> None:
        # FIFO on one thread: this marker runs after every decode submitted before it, and the
        # decodes' completion callbacks reach the loop before the marker's own.
        await loop.run_in_executor(None, lambda: None)

    yield drain
    executor.shutdown(wait=True)


async def begin(config: WhisperConfig = NO_INTERIMS, on_interim: Any = None) -> WhisperUtterance:
    session = await WhisperSTT(config).connect()
    return session.begin(on_interim)


async def test_transcripts_contain_the_words_spoken(speech_samples: tuple[SpeechSample, ...]) -> None:
    hypotheses = []
    for sample in speech_samples:
        utterance = await begin(WhisperConfig())
        push_with_vad(utterance, sample.pcm)
        transcript = await utterance.finalize()
        hypotheses.append(transcript.text)
        n_frames = len(speech_frames(sample.pcm)) + 2 * len(silence(0.3))
        assert transcript.audio_s == pytest.approx(n_frames * FRAME_S)
    assert wer([s.text for s in speech_samples], hypotheses) < MAX_WER, hypotheses


async def test_finalize_after_a_pause_returns_the_speculative_decode(
    speech_samples: tuple[SpeechSample, ...],
) -> None:
    utterance = await begin()
    push_all(utterance, speech_frames(speech_samples[0].pcm), voiced=True)
    assert utterance.stats.decodes == 0
    push_all(utterance, silence(0.3), voiced=False)  # the pause starts a decode; the endpoint follows
    assert utterance.stats.speculative == 1

    transcript = await utterance.finalize()

    assert utterance.stats.decodes == 1  # finalize started nothing new
    assert utterance.stats.served_by == "speculative"
    assert wer([speech_samples[0].text], [transcript.text]) < MAX_WER, transcript.text


async def test_speech_resuming_after_a_pause_keeps_both_parts(
    speech_samples: tuple[SpeechSample, ...],
) -> None:
    first, second = speech_samples[1], speech_samples[2]
    utterance = await begin()
    push_all(utterance, speech_frames(first.pcm), voiced=True)
    push_all(utterance, silence(0.2), voiced=False)
    push_all(utterance, speech_frames(second.pcm), voiced=True)
    push_all(utterance, silence(0.3), voiced=False)

    transcript = await utterance.finalize()

    assert utterance.stats.stale == 1  # the decode of the first part alone was not used
    assert wer([f"{first.text} {second.text}"], [transcript.text]) < MAX_WER, transcript.text


@pytest.mark.parametrize("kind", ["silence", "noise", "hum"])
async def test_no_words_are_invented_on_silence_or_noise(kind: str) -> None:
    n = 32_000  # 2 s
    rng = np.random.default_rng(3)
    t = np.arange(n) / 16_000
    audio = {
        "silence": np.zeros(n),
        "noise": rng.normal(0.0, 0.03, n),  # about -30 dBFS of white noise
        "hum": 0.05 * np.sin(2 * np.pi * 100 * t) + rng.normal(0.0, 0.005, n),
    }[kind]
    pcm = (audio * 32767).astype("<i2").tobytes()
    utterance = await begin()
    # voiced=True: as if the VAD had been fooled, so Whisper itself sees the noise.
    push_all(utterance, speech_frames(pcm), voiced=True)
    push_all(utterance, silence(0.3), voiced=False)

    transcript = await utterance.finalize()

    assert transcript.text == ""
    assert transcript.audio_s == pytest.approx(2.3)


async def test_interims_arrive_on_the_loop_thread_while_the_caller_speaks(
    speech_samples: tuple[SpeechSample, ...],
) -> None:
    # Real-time pacing on the pipeline's virtual clock: idle time is skipped, decode time is not,
    # so decodes finish while later frames are still arriving, as on a live call.
    clock = VirtualClock()
    clock.start()
    interims: list[str] = []
    threads: set[int] = set()
    arrived = asyncio.Event()

    def on_interim(text: str) -> None:
        interims.append(text)
        threads.add(threading.get_ident())
        arrived.set()

    try:
        utterance = await begin(WhisperConfig(interim_interval_s=0.6), on_interim)
        spoken = speech_samples[3].pcm + speech_samples[4].pcm
        deadline = clock.now()
        for k, frame in enumerate(speech_frames(spoken), 1):
            deadline += FRAME_S
            await clock.sleep_until(deadline)
            utterance.push(frame, True)
            if k in (40, 80):
                # Wait for the interim that 0.8 s of speech started rather than for a time a
                # loaded machine may not decode it in; the caller is still speaking here.
                # (The timeout only keeps a broken decoder from hanging the suite.)
                await asyncio.wait_for(arrived.wait(), 120)
                arrived.clear()
        push_all(utterance, silence(0.3), voiced=False)
        transcript = await utterance.finalize()
    finally:
        await clock.aclose()

    delivered = len(interims)
    assert delivered >= 2, interims
    assert utterance.stats.interim >= 2
    assert threads == {threading.get_ident()}
    assert all(interims)
    assert all(a != b for a, b in itertools.pairwise(interims))  # only changes are reported
    final_words = set(words(transcript.text).split())
    assert set(words(interims[-1]).split()) & final_words
    assert wer([f"{speech_samples[3].text} {speech_samples[4].text}"], [transcript.text]) < MAX_WER


async def test_cancel_abandons_pending_work_silently(
    speech_samples: tuple[SpeechSample, ...], drain_executor: Callable[[], Awaitable[None]]
) -> None:
    loop = asyncio.get_running_loop()
    problems: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: problems.append(context))
    interims: list[str] = []
    utterance = await begin(WhisperConfig(interim_interval_s=0.2), interims.append)
    push_all(utterance, speech_frames(speech_samples[0].pcm)[:50], voiced=True)  # an interim decode starts
    push_all(utterance, silence(0.1), voiced=False)  # a speculative decode is queued behind it
    assert utterance.stats.decodes == 1

    utterance.cancel()
    utterance.push(SILENT_FRAME, True)  # frames after cancel are ignored
    with pytest.raises(ProviderError, match="cancelled"):
        await utterance.finalize()
    await drain_executor()
    gc.collect()

    assert utterance.stats.decodes == 1  # the queued decode never started
    assert interims == []
    assert problems == []
    assert asyncio.all_tasks() == {asyncio.current_task()}


async def test_a_finalize_cancelled_by_its_task_group_leaves_nothing_behind(
    speech_samples: tuple[SpeechSample, ...], drain_executor: Callable[[], Awaitable[None]]
) -> None:
    loop = asyncio.get_running_loop()
    problems: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: problems.append(context))
    utterance = await begin()
    push_all(utterance, speech_frames(speech_samples[1].pcm), voiced=True)

    async def sibling_fails() -> None:
        raise RuntimeError("another stage of the call failed")

    # Tasks start in creation order: finalize starts its decode and waits, then the sibling's
    # failure makes the group cancel that wait, as a call's TaskGroup does.
    with pytest.raises(ExceptionGroup):
        async with asyncio.TaskGroup() as group:
            group.create_task(utterance.finalize())
            group.create_task(sibling_fails())
    assert utterance.stats.final == 1
    await drain_executor()
    gc.collect()

    assert problems == []
    assert asyncio.all_tasks() == {asyncio.current_task()}


async def test_closing_the_session_cancels_open_utterances(
    speech_samples: tuple[SpeechSample, ...], drain_executor: Callable[[], Awaitable[None]]
) -> None:
    session = await WhisperSTT(NO_INTERIMS).connect()
    open_one = session.begin()
    push_all(open_one, speech_frames(speech_samples[2].pcm), voiced=True)
    push_all(open_one, silence(0.1), voiced=False)

    await session.aclose()
    await drain_executor()

    with pytest.raises(ProviderError, match="cancelled"):
        await open_one.finalize()


class BrokenModel:
    """Stands in for a WhisperModel whose engine fails on every decode."""

    def transcribe(self, audio: Any, **options: Any) -> Any:
        raise RuntimeError("model.bin is corrupt")

    def feature_extractor(self, audio: Any) -> Any:  # the short-window path starts here
        raise RuntimeError("model.bin is corrupt")


async def test_engine_failures_reach_finalize_as_provider_errors(
    speech_samples: tuple[SpeechSample, ...],
) -> None:
    utterance = WhisperUtterance(BrokenModel(), WhisperConfig(), on_interim=lambda _text: None)  # type: ignore[arg-type]
    push_all(utterance, speech_frames(speech_samples[4].pcm), voiced=True)  # an interim decode starts
    push_all(utterance, silence(0.3), voiced=False)

    with capture_logs() as logs:
        with pytest.raises(ProviderError, match=r"model\.bin is corrupt") as info:
            await utterance.finalize()

    assert info.value.provider == "whisper"
    assert "whisper decode of" in str(info.value)
    assert [e["kind"] for e in logs if e["event"] == "whisper_decode_failed"] == ["interim"]


async def test_empty_utterance_costs_no_decode() -> None:
    utterance = await begin()
    transcript = await utterance.finalize()
    assert (transcript.text, transcript.audio_s) == ("", 0.0)
    assert utterance.stats.decodes == 0


async def test_instances_with_the_same_settings_share_one_model() -> None:
    first, second = WhisperSTT(), WhisperSTT(WhisperConfig(beam_size=2, interim_interval_s=0))
    await asyncio.gather(first.warm(), second.warm())
    assert first.engine is second.engine


async def test_a_missing_model_is_a_provider_error_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    with pytest.raises(ProviderError, match="no-such-model") as info:
        await WhisperSTT(WhisperConfig(model_dir=str(missing))).warm()
    assert info.value.provider == "whisper"
    with pytest.raises(ProviderError, match="could not load the model"):
        await WhisperSTT(WhisperConfig(model_dir=str(tmp_path))).warm()


def test_config_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="beam_size"):
        WhisperConfig(beam_size=0)
    with pytest.raises(ValueError, match="interim_interval_s"):
        WhisperConfig(interim_interval_s=-1)
