"""Offline TTS: hibari (ONNX, 24 kHz) with its bundled voice "heart".

hibari synthesizes one sentence at a time (~130x real time on one core), so streaming per
sentence gives first audio after the first sentence instead of after the whole reply.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt
import structlog

from .._audio import to_internal
from .._errors import ProviderError
from .._executors import HIBARI
from .._tts import TTS

if TYPE_CHECKING:
    from hibari import Hibari

__all__ = ["BUNDLED_VOICE", "HibariConfig", "HibariTTS"]

PROVIDER = "hibari"
BUNDLED_VOICE = "heart"
"""The only voice inside the package; hibari downloads every other one on first use."""
_NATIVE_RATE = 24_000
# Warm-up text: "voicerun" is not in the lexicon, so this also loads the out-of-vocabulary net,
# which hibari otherwise loads on the first unknown word of a real reply.
_WARM_UP_TEXT = "Warm up, voicerun."

log = structlog.get_logger("voicerun.pipeline.hibari")

Float32Array = npt.NDArray[np.float32]


@dataclass(frozen=True, slots=True)
class HibariConfig:
    voice: str = BUNDLED_VOICE
    speed: float = 1.0
    """1.0 is the voice's natural pace; hibari accepts 0.5 (slow) to 2.0 (fast)."""
    threads: int = 1
    """onnxruntime threads; one core already runs ~100x real time."""
    seed: int | None = None
    """Fixes the noise component so the same text gives identical audio (tests); None varies it."""

    def __post_init__(self) -> None:
        if not 0.5 <= self.speed <= 2.0:
            raise ValueError(f"hibari speed must be 0.5-2.0, got {self.speed}")
        if self.threads < 1:
            raise ValueError(f"hibari threads must be >= 1, got {self.threads}")


# One engine per process and settings, shared by every call: loading costs ~0.7 s with the G2P
# lexicons. The lock is taken in worker threads only, so concurrent warm() calls load once.
_engines: dict[tuple[str, int], Hibari] = {}
_engines_lock = threading.Lock()


def _load_engine(voice: str, threads: int) -> Hibari:
    """Blocking: runs in a worker thread."""
    key = (voice, threads)
    with _engines_lock:
        engine = _engines.get(key)
        if engine is not None:
            return engine
        started = time.perf_counter()
        try:
            from hibari import Hibari

            engine = Hibari(voice=voice, threads=threads)
            # G2P (lexicons, tagger, OOV net) loads lazily on the first sentence: pay for it here
            # so the first reply of the first call is not ~0.5 s late.
            engine(_WARM_UP_TEXT)
        except ImportError as exc:
            raise ProviderError(
                "hibari needs the hibari-tts package; it is not installed", provider=PROVIDER
            ) from exc
        except (RuntimeError, ValueError, OSError) as exc:
            raise ProviderError(f"hibari could not load voice {voice!r}: {exc}", provider=PROVIDER) from exc
        log.info(
            "hibari_loaded",
            voice=voice,
            threads=threads,
            load_ms=round((time.perf_counter() - started) * 1000),
        )
        _engines[key] = engine
        return engine


def _next_pcm(sentences: Iterator[Float32Array], text: str) -> bytes | None:
    """Synthesize the next sentence and convert it to internal PCM; None when done. Blocking."""
    try:
        # next() with a default: a StopIteration must not cross into the awaiting coroutine.
        wav = next(sentences, None)
    except (RuntimeError, ValueError, KeyError, IndexError, OSError) as exc:
        raise ProviderError(f"hibari could not synthesize {text[:60]!r}: {exc}", provider=PROVIDER) from exc
    if wav is None:
        return None
    return to_internal(wav, _NATIVE_RATE).astype("<i2", copy=False).tobytes()


class HibariTTS(TTS):
    name = "hibari"
    model = "heart"

    def __init__(self, config: HibariConfig | None = None) -> None:
        self.config = config if config is not None else HibariConfig()
        if self.config.voice != BUNDLED_VOICE:
            # Any other voice is fetched from the internet on first use: fail at start-up instead
            # of in the middle of a call on a machine that cannot reach it.
            raise ProviderError(
                f"hibari voice {self.config.voice!r} is not available offline; "
                f"only {BUNDLED_VOICE!r} ships in the hibari-tts package",
                provider=PROVIDER,
            )
        self._engine: Hibari | None = None

    @property
    def engine(self) -> Hibari:
        """The loaded engine (shared by every HibariTTS with the same voice and threads)."""
        if self._engine is None:
            raise ProviderError("hibari is not loaded: await warm() first", provider=PROVIDER)
        return self._engine

    async def warm(self) -> None:
        if self._engine is None:
            self._engine = await asyncio.to_thread(_load_engine, self.config.voice, self.config.threads)

    async def synthesize(self, text: str) -> AsyncIterator[bytes]:
        """One chunk per sentence, 16 kHz int16; synthesis runs on Hibari's own threads."""
        await self.warm()
        started = time.perf_counter()
        # A plain generator; each next() synthesizes one sentence in a worker thread. Only one
        # next() is in flight at a time, so the generator is never entered from two threads.
        sentences: Iterator[Float32Array] = self.engine.stream(
            text, speed=self.config.speed, seed=self.config.seed
        )
        first = True
        while (pcm := await HIBARI.run(_next_pcm, sentences, text)) is not None:
            if first:
                first = False
                log.debug("hibari_first_audio", first_audio_ms=round((time.perf_counter() - started) * 1000),
                          chars=len(text))  # fmt: skip
            if pcm:
                yield pcm
