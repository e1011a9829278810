"""HibariTTS with the real bundled voice: streamed internal-format audio that Whisper understands."""

from __future__ import annotations

import re

import jiwer
import numpy as np
import pytest

from pipeline import FRAME_BYTES, FRAME_S, ProviderError, frames, rms_dbfs
from pipeline.providers import HibariConfig, HibariTTS, WhisperConfig, WhisperSTT

TWO_SENTENCES = "Your appointment is confirmed for Tuesday at noon. See you then."


def words(text: str) -> list[str]:
    return re.sub(r"[^a-z0-9']+", " ", text.lower()).split()


async def synthesize(tts: HibariTTS, text: str) -> list[bytes]:
    return [chunk async for chunk in tts.synthesize(text)]


async def test_streams_one_chunk_per_sentence_of_16khz_int16_speech() -> None:
    chunks = await synthesize(HibariTTS(), TWO_SENTENCES)

    assert len(chunks) == 2  # the first sentence can play while the second is synthesized
    assert all(len(c) % 2 == 0 and len(c) > 0 for c in chunks)
    pcm = b"".join(chunks)
    duration_s = len(pcm) / 2 / 16_000
    n_words = len(words(TWO_SENTENCES))
    assert n_words / 5.0 < duration_s < n_words / 1.5  # 1.5-5 words a second, as people speak
    assert rms_dbfs(pcm) > -35.0  # speech at a normal level, not near-silence


async def test_whisper_hears_the_words_that_were_synthesized() -> None:
    pcm = b"".join(await synthesize(HibariTTS(HibariConfig(seed=11)), TWO_SENTENCES))
    utterance = (await WhisperSTT(WhisperConfig(interim_interval_s=0)).connect()).begin()
    samples = np.frombuffer(pcm, "<i2")
    for frame in frames(samples):
        utterance.push(frame, True)
    for _ in range(15):
        utterance.push(bytes(FRAME_BYTES), False)

    transcript = await utterance.finalize()

    error = jiwer.wer(" ".join(words(TWO_SENTENCES)), " ".join(words(transcript.text)) or "<empty>")
    assert error < 0.25, transcript.text
    assert transcript.audio_s == pytest.approx((len(list(frames(samples))) + 15) * FRAME_S)


async def test_a_fixed_seed_gives_identical_audio() -> None:
    tts = HibariTTS(HibariConfig(seed=5))
    assert await synthesize(tts, "Same words.") == await synthesize(tts, "Same words.")


async def test_text_without_words_gives_no_audio() -> None:
    assert await synthesize(HibariTTS(), "   ") == []


async def test_a_consumer_may_stop_after_the_first_sentence() -> None:
    stream = HibariTTS().synthesize(TWO_SENTENCES)
    first = await anext(stream)
    await stream.aclose()  # e.g. the caller barged in
    assert first


async def test_instances_with_the_same_settings_share_one_engine() -> None:
    first, second = HibariTTS(), HibariTTS(HibariConfig(speed=1.2))
    await first.warm()
    await second.warm()
    assert first.engine is second.engine


def test_a_voice_that_would_need_a_download_is_refused_by_name() -> None:
    with pytest.raises(ProviderError, match="'emma'") as info:
        HibariTTS(HibariConfig(voice="emma"))
    assert info.value.provider == "hibari"
    assert "heart" in str(info.value)


def test_config_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="speed"):
        HibariConfig(speed=3.0)
    with pytest.raises(ValueError, match="threads"):
        HibariConfig(threads=0)
