"""Scripted providers for tests and benchmarks: real STT/LLM/TTS implementations with instant,
predictable output, so the pipeline's own behaviour and overhead can be measured in isolation."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from ._audio import SAMPLE_RATE
from ._llm import LLM, LLMEvent, LLMUsage, Message, TextDelta, ToolSpec
from ._stt import STT, InterimCallback, STTSession, Transcript, Utterance
from ._tts import TTS

if TYPE_CHECKING:
    from .providers import ProviderRegistry


class _ScriptedUtterance(Utterance):
    def __init__(self, text: str) -> None:
        self._text = text
        self.frames = 0

    def push(self, pcm: bytes, voiced: bool) -> None:
        self.frames += 1

    async def finalize(self) -> Transcript:
        return Transcript(self._text, self.frames * 0.02)

    def cancel(self) -> None:
        pass


class _ScriptedSession(STTSession):
    def __init__(self, next_text: Callable[[], str]) -> None:
        self._next = next_text

    def begin(self, on_interim: InterimCallback | None = None) -> Utterance:
        return _ScriptedUtterance(self._next())


class ScriptedSTT(STT):
    """Returns the given transcripts, one per utterance, the moment speech ends (then repeats the last)."""

    name = "scripted"
    model = "scripted"

    def __init__(self, transcripts: Sequence[str]) -> None:
        self._transcripts = list(transcripts) or [""]

    async def connect(self) -> STTSession:
        it = iter(self._transcripts)
        last = self._transcripts[-1]
        return _ScriptedSession(lambda: next(it, last))


class ScriptedLLM(LLM):
    """Streams each reply in `chunks` deltas at once; reply(messages) picks the text."""

    name = "scripted"
    model = "scripted"

    def __init__(self, reply: Callable[[Sequence[Message]], str] | str, chunks: int = 3) -> None:
        self._reply = reply
        self._chunks = chunks
        self.calls = 0

    async def chat(
        self, messages: Sequence[Message], tools: Sequence[ToolSpec] = ()
    ) -> AsyncIterator[LLMEvent]:
        self.calls += 1
        text = self._reply if isinstance(self._reply, str) else self._reply(messages)
        words = text.split(" ")
        step = max(1, -(-len(words) // self._chunks))
        for i in range(0, len(words), step):
            yield TextDelta(text=" ".join(words[i : i + step]) + (" " if i + step < len(words) else ""))
        yield LLMUsage(
            prompt_tokens=sum(len(m.content.split()) for m in messages), completion_tokens=len(words)
        )


class ToneTTS(TTS):
    """A 440 Hz tone of `seconds_per_segment` for every segment, returned at once."""

    name = "tone"
    model = "tone"

    def __init__(self, seconds_per_segment: float = 0.2, level: float = 0.3) -> None:
        n = int(seconds_per_segment * SAMPLE_RATE)
        t = np.arange(n) / SAMPLE_RATE
        self._pcm = (np.sin(2 * np.pi * 440 * t) * level * 32767).astype("<i2").tobytes()

    async def synthesize(self, text: str) -> AsyncIterator[bytes]:
        yield self._pcm


def speech_like(seconds: float, *, seed: int = 0, level: float = 0.3) -> npt.NDArray[np.int16]:
    """Voiced-sounding audio (a 120-220 Hz glottal buzz through moving formants, syllable-rate
    envelope) that webrtcvad classifies as speech; for tests and benchmarks that need no words."""
    rng = np.random.default_rng(seed)
    n = int(seconds * SAMPLE_RATE)
    t = np.arange(n) / SAMPLE_RATE
    f0 = 150 + 40 * np.sin(2 * np.pi * 0.7 * t + rng.uniform(0, 6))
    phase = 2 * np.pi * np.cumsum(f0) / SAMPLE_RATE
    buzz = sum(np.sin(k * phase) / k for k in range(1, 25))
    formants = 1 + 0.6 * np.sin(2 * np.pi * 3.0 * t) * np.sin(phase * 3)
    envelope = 0.55 + 0.45 * np.sin(2 * np.pi * 4.0 * t + rng.uniform(0, 6))
    x = buzz * formants * envelope
    x = x / (np.max(np.abs(x)) or 1.0) * level
    ramp = min(n // 2, int(0.01 * SAMPLE_RATE))
    if ramp:
        x[:ramp] *= np.linspace(0, 1, ramp)
        x[-ramp:] *= np.linspace(1, 0, ramp)
    return (x * 32767).astype(np.int16)


def fricative(seconds: float, dbfs: float, *, seed: int = 1) -> npt.NDArray[np.int16]:
    """An /s/: white noise above 3 kHz at `dbfs` RMS, which webrtcvad does not call voiced; with
    speech_like() after it, the start of "Stop" or "Sorry"."""
    rng = np.random.default_rng(seed)
    n = int(seconds * SAMPLE_RATE)
    spectrum = np.fft.rfft(rng.standard_normal(n))
    spectrum[np.fft.rfftfreq(n, 1 / SAMPLE_RATE) < 3000] = 0
    x = np.fft.irfft(spectrum, n)
    x *= 10 ** (dbfs / 20) / (np.sqrt(np.mean(x**2)) or 1.0)
    return (x * 32767).astype(np.int16)


INSTANT_TRANSCRIPT = "what time is it"
INSTANT_REPLY = "It is noon. Anything else?"


def instant_providers(
    transcript: str = INSTANT_TRANSCRIPT, reply: str = INSTANT_REPLY, tts_seconds: float = 0.2
) -> ProviderRegistry:
    """A provider registry in which every provider of this build answers at once: the STT with
    `transcript` as each utterance ends, the LLM with `reply` in three chunks, the TTS with
    `tts_seconds` of tone per sentence. Any workflow runs on it unchanged (`rules` stays the
    rules), so `voicerun load --instant-providers` and the benchmarks measure the pipeline alone."""
    import dataclasses

    from .providers import PROVIDERS, ProviderRegistry

    stt, llm, tts = ScriptedSTT([transcript]), ScriptedLLM(reply, chunks=3), ToneTTS(tts_seconds)
    fakes: dict[str, Any] = {"stt": stt, "llm": llm, "tts": tts}

    def entries(stage: str) -> dict[str, Any]:
        out = {}
        for name in PROVIDERS.names(stage):
            entry = PROVIDERS.entry(stage, name)
            build = None if entry.build is None else (lambda m, o, fake=fakes[stage]: fake)
            out[name] = dataclasses.replace(entry, build=build)
        return out

    return ProviderRegistry(stt=entries("stt"), llm=entries("llm"), tts=entries("tts"))
