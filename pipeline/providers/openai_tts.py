"""OpenAI speech (POST /audio/speech), streamed as raw PCM and resampled to the internal format.

OpenAI's `pcm` is 24 kHz mono s16le with no header, sent in chunks of any length (odd ones too).
One soxr ResampleStream per synthesis carries filter state across chunks, so chunk edges do not
click as they would with one-shot resampling of each chunk. Resampling a chunk takes
microseconds, so it runs inline.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
import soxr
import structlog

from .._audio import SAMPLE_RATE
from .._errors import ProviderError
from .._tts import TTS, expected_audio, whole_samples
from ._options import config_kwargs
from ._resilience import RetryPolicy, Timeouts, stream_with_retries
from .openai_llm import PROVIDER, map_openai_error, openai_client, warm_connection

__all__ = ["OpenAITTS", "OpenAITTSConfig"]

NATIVE_RATE = 24_000
"""OpenAI's response_format="pcm": 24 kHz mono signed 16-bit little-endian."""

log = structlog.get_logger("voicerun.pipeline.openai")


@dataclass(frozen=True, slots=True)
class OpenAITTSConfig:
    model: str = "gpt-4o-mini-tts"
    voice: str = "alloy"
    base_url: str | None = None
    """None: the SDK's default, OPENAI_BASE_URL if set, else https://api.openai.com/v1."""
    api_key: str | None = field(default=None, repr=False)
    """None: OPENAI_API_KEY."""
    speed: float | None = None
    """0.25-4.0; None: not sent (1.0)."""
    instructions: str | None = None
    """Tone and delivery, for gpt-4o-mini-tts (tts-1 and tts-1-hd ignore it); None: not sent."""
    timeouts: Timeouts = field(default_factory=Timeouts)
    retry: RetryPolicy = field(default_factory=RetryPolicy)

    def __post_init__(self) -> None:
        if not self.model:
            raise ValueError("openai tts model must not be empty")
        if not self.voice:
            raise ValueError("openai tts voice must not be empty")
        if self.speed is not None and not 0.25 <= self.speed <= 4.0:
            raise ValueError(f"openai tts speed must be 0.25-4.0, got {self.speed}")

    @classmethod
    def from_options(cls, model: str | None, options: Mapping[str, Any]) -> OpenAITTSConfig:
        """A workflow's provider spec -> config. `timeouts` and `retry` are nested mappings of
        Timeouts / RetryPolicy fields; unknown keys raise ValueError naming them."""
        kwargs = config_kwargs("openai tts", cls, options)
        if model is not None:
            kwargs["model"] = model
        try:
            return cls(**kwargs)
        except TypeError as exc:
            raise ValueError(f"openai tts options: {exc}") from exc


class OpenAITTS(TTS):
    name = PROVIDER

    def __init__(self, config: OpenAITTSConfig | None = None) -> None:
        self.config = config if config is not None else OpenAITTSConfig()
        self.model = self.config.model
        self._client = openai_client(self.config.base_url, self.config.api_key, self.config.timeouts)

    async def synthesize(self, text: str) -> AsyncIterator[bytes]:
        """16 kHz int16 PCM as it streams; retried only until the first audio arrives."""
        if not text.strip():
            return
        started = time.perf_counter()
        resampler = soxr.ResampleStream(NATIVE_RATE, SAMPLE_RATE, 1, dtype="int16")
        first_audio_ms: int | None = None
        received = 0
        # stream_with_retries is an async generator (typed as an iterator): close it explicitly.
        chunks = cast(
            "AsyncGenerator[bytes, None]",
            stream_with_retries(
                lambda: self._pcm(text),
                provider=PROVIDER,
                timeouts=self.config.timeouts,
                retry=self.config.retry,
                empty=expected_audio(text),
            ),
        )
        # aclosing: an interrupted segment (barge-in) closes the HTTP response now, not at GC.
        async with aclosing(chunks):
            async for chunk in whole_samples(chunks, PROVIDER):
                if first_audio_ms is None:
                    first_audio_ms = round((time.perf_counter() - started) * 1000)
                received += len(chunk)
                out = resampler.resample_chunk(np.frombuffer(chunk, "<i2"))
                if out.size:
                    yield out.astype("<i2", copy=False).tobytes()
        tail = resampler.resample_chunk(np.zeros(0, np.int16), last=True)
        if tail.size:
            yield tail.astype("<i2", copy=False).tobytes()
        log.debug(
            "tts_done",
            provider=PROVIDER,
            model=self.model,
            voice=self.config.voice,
            chars=len(text),
            first_audio_ms=first_audio_ms,
            audio_ms=received // 2 * 1000 // NATIVE_RATE,
        )

    async def _pcm(self, text: str) -> AsyncIterator[bytes]:
        """One attempt: raw 24 kHz PCM bytes, SDK and transport errors mapped to ProviderError."""
        import httpx2
        import openai

        speed = self.config.speed if self.config.speed is not None else openai.omit
        instructions = self.config.instructions if self.config.instructions is not None else openai.omit
        try:
            async with self._client.audio.speech.with_streaming_response.create(
                model=self.model,
                voice=self.config.voice,
                input=text,
                response_format="pcm",
                speed=speed,
                instructions=instructions,
            ) as response:
                content_type = response.headers.get("content-type", "")
                if content_type.startswith(("application/json", "text/")):
                    raise ProviderError(
                        f"openai speech returned {content_type!r}, not audio: {(await response.text())[:200]!r}",
                        provider=PROVIDER,
                    )
                # Body errors come straight from httpx2 here (the SDK maps them only for SSE).
                async for chunk in response.iter_bytes():
                    if chunk:
                        yield chunk
        except (openai.OpenAIError, httpx2.TransportError) as exc:
            raise map_openai_error(exc) from exc

    async def warm(self) -> None:
        await warm_connection(self._client, self.config.timeouts)

    async def aclose(self) -> None:
        await self._client.close()
