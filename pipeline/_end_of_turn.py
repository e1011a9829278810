"""End of turn: has the caller finished, or only paused? Smart Turn v3.2 on the audio, a cue from
the partial transcript, and a bounded wait.

The model (models/smart-turn-v3.2-cpu.onnx, vendored from the pipecat-ai wheel, BSD-2-Clause)
reads the last 8 s of the turn and answers P(turn complete). It does not stream, and its
"incomplete" answer fades as trailing silence grows (on Hibari speech, cut sentences were judged
right 8-9 times in 12 at 200 ms of silence, 2-5 at 300 ms): the session asks once per pause, at
~200 ms of silence, and holds that answer for the rest of the pause. The model misses some cut
sentences outright ("I would like to book a table for" scores 0.9), so a partial transcript that
ends in a word that cannot end a sentence keeps the turn open whatever the model says.

decide_end_of_turn() is the whole policy, pure; EndOfTurnModel is the model on a thread of its own.
See docs/end-of-turn.md for how the session uses them.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import re
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Generic, Literal, TypeVar

import numpy as np
import numpy.typing as npt
import structlog

from ._audio import SAMPLE_RATE
from ._errors import AudioFormatError, PipelineError

if TYPE_CHECKING:
    import onnxruntime
    from faster_whisper.feature_extractor import FeatureExtractor

__all__ = [
    "MODEL_PATH",
    "MODEL_SHA256",
    "MODEL_SIZE_BYTES",
    "EndOfTurnConfig",
    "EndOfTurnError",
    "EndOfTurnModel",
    "EndOfTurnPrediction",
    "TurnDecision",
    "closing_cue",
    "decide_end_of_turn",
    "doubtful_cue",
    "shared_end_of_turn_model",
    "smart_turn_features",
    "unfinished_cue",
]

log = structlog.get_logger("voicerun.pipeline.end_of_turn")

MODEL_PATH = Path(__file__).parent / "models" / "smart-turn-v3.2-cpu.onnx"
MODEL_SIZE_BYTES = 8_679_182
MODEL_SHA256 = "2bb026316b14a660486a75b1733cd3fbab8c2fd0314dc9af7be49f8cca967e4f"

WINDOW_S = 8
_WINDOW_SAMPLES = WINDOW_S * SAMPLE_RATE
_N_MELS = 80
_N_FRAMES = 800
_INPUT = "input_features"
_OUTPUT = "logits"
# Zero-mean unit-variance normalisation of the waveform, as Whisper's feature extractor does with
# do_normalize=True; the epsilon keeps all-zero audio finite.
_NORM_EPS = 1e-7

Float32Array = npt.NDArray[np.float32]


class EndOfTurnError(PipelineError):
    """The end-of-turn model is missing, corrupt, cannot be loaded, or failed to score audio."""


# -- the decision: pure ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EndOfTurnConfig:
    """When a pause ends the caller's turn. All times are silence after the last voiced frame."""

    threshold: float = 0.5
    """P(complete) at or above which the turn ends at once (Smart Turn's own cut-off)."""
    ask_after_ms: int = 200
    """When the session asks the model, once per pause: later, the model's "incomplete" fades."""
    max_wait_ms: int = 2000
    """The turn ends here whatever the model and the transcript say (a pause people hold
    mid-sentence is 0.4-1.0 s; peers use up to 3 s)."""
    no_score_silence_ms: int = 300
    """When the model has no answer (too busy, see EndOfTurnModel): silence alone ends the turn,
    as the fixed endpoint did before the model."""
    doubtful_wait_ms: int = 1200
    """A transcript that usually goes on but may have ended (doubtful_cue: "a table for it", where
    Whisper often invents the "it" after a cut "for") ends the turn no sooner than this, even when
    the model says complete. Longer than most mid-sentence pauses (0.4-1.0 s)."""

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold <= 1.0:
            raise ValueError(f"end-of-turn threshold must be in (0, 1], got {self.threshold}")
        if self.doubtful_wait_ms < 0:
            raise ValueError(f"end-of-turn doubtful_wait_ms must be >= 0, got {self.doubtful_wait_ms}")
        if not 0 <= self.ask_after_ms <= self.no_score_silence_ms <= self.max_wait_ms:
            raise ValueError(
                "end-of-turn timings must satisfy 0 <= ask_after_ms <= no_score_silence_ms <= max_wait_ms, "
                f"got {self.ask_after_ms}, {self.no_score_silence_ms}, {self.max_wait_ms}"
            )


_TOLERANCE_MS = 1e-6

DecisionReason = Literal[
    "complete", "incomplete", "unfinished_text", "doubtful_text", "closing_text", "no_score", "max_wait"
]


@dataclass(frozen=True, slots=True)
class TurnDecision:
    action: Literal["end", "wait"]
    reason: DecisionReason
    """complete / incomplete: the model's score against the threshold; unfinished_text: the
    transcript's last words or mark (`cue`) cannot end a sentence; doubtful_text: they rarely do,
    and the pause is shorter than doubtful_wait_ms; closing_text: the model said incomplete but
    the caller said goodbye or thanks (`cue`); no_score: the model had no answer and silence
    timing decided; max_wait: the longest pause allowed has passed."""
    wait_ms: float
    """On "wait": further silence after which the turn ends if nothing changes (ask again then,
    or sooner when the transcript changes); 0 on "end"."""
    cue: str | None = None
    """On unfinished_text and doubtful_text: the words or mark that keep the turn open (for the log)."""


def decide_end_of_turn(
    config: EndOfTurnConfig, p_complete: float | None, transcript: str, silence_ms: float
) -> TurnDecision:
    """End the turn now, or wait how much longer. `p_complete` is the model's answer for this pause
    (None: no answer), `transcript` the partial text of the turn so far. A transcript cue only ever
    delays (never past max_wait_ms), so a wrong cue costs latency, never a cut sentence."""
    if p_complete is not None and not 0.0 <= p_complete <= 1.0:  # also rejects NaN
        raise ValueError(f"end-of-turn p_complete must be in [0, 1], got {p_complete}")
    if not silence_ms >= 0.0:
        raise ValueError(f"end-of-turn silence_ms must be >= 0, got {silence_ms}")
    # Within a nanosecond counts as reached, so that asking again after wait_ms always ends the
    # turn even where float rounding makes silence + (limit - silence) fall short of the limit.
    reached = silence_ms + _TOLERANCE_MS
    if reached >= config.max_wait_ms:
        return TurnDecision("end", "max_wait", 0.0)
    until_max = config.max_wait_ms - silence_ms
    cue = unfinished_cue(transcript)
    if cue is not None:
        return TurnDecision("wait", "unfinished_text", until_max, cue)
    doubt = doubtful_cue(transcript)
    doubtful_ms = min(config.doubtful_wait_ms, config.max_wait_ms)
    if p_complete is None:
        until = config.no_score_silence_ms
        if doubt is not None and reached < doubtful_ms:
            until = max(until, doubtful_ms)
            if reached < until:
                return TurnDecision("wait", "doubtful_text", until - silence_ms, doubt)
        if reached >= until:
            return TurnDecision("end", "no_score", 0.0)
        return TurnDecision("wait", "no_score", until - silence_ms)
    if p_complete >= config.threshold:
        if doubt is not None and reached < doubtful_ms:
            return TurnDecision("wait", "doubtful_text", doubtful_ms - silence_ms, doubt)
        return TurnDecision("end", "complete", 0.0)
    closing = closing_cue(transcript)
    if closing is not None:
        return TurnDecision("end", "closing_text", 0.0, closing)
    return TurnDecision("wait", "incomplete", until_max)


# Words after which an English sentence is not over. Only words that rarely end a statement are
# listed: "up", "in", "off" end phrasal verbs ("hang up"), "this", "his", "some" and "no" stand alone
# as pronouns or answers, "though" and "then" end sentences as adverbs.
_ARTICLES_AND_POSSESSIVES = frozenset("a an the my your our their its every".split())
_CONJUNCTIONS = frozenset(
    "and or but nor because cause cuz if unless although whereas whether than plus".split()
)
_FILLERS = frozenset("um umm uh uhh uhm er erm hmm hm gonna wanna".split())
# Prepositions end wh-questions ("What is it for?", "Where are you from?"), not statements, and
# not yes/no questions either: Whisper writes "Can you send it to?" for a question cut short.
_PREPOSITIONS = frozenset(
    "to for of with from at into onto about toward towards via per between among amongst during "
    "until till including except regarding concerning within upon as".split()
)
# Auxiliaries end short answers after a pronoun ("Yes, it is.", "I can.") and nothing else
# ("My order number is").
_AUXILIARIES = frozenset(
    "is are was were am will would can could should shall must might has have had".split()
)
_PRONOUNS = frozenset("i you we they he she it that this there here who what where which".split())
_WH_WORDS = frozenset("what where who whom whose which how when why".split())
# In a wh-question, "do you" / "can I" at the end leaves out the verb ("What time do you").
# Copulas are not listed: "How are you?" and "Where is it?" are whole questions.
_QUESTION_AUXILIARIES = frozenset("do does did can could would will should shall may might must".split())
_SUBJECTS = frozenset("i you we they he she".split())
# A copula then "number" introduces the number ("it's number ... three one two").
_COPULAS = frozenset("is was it's that's".split())
_INTRODUCERS = frozenset("number".split())
# Marks: ellipsis (three dots or U+2026), comma, semicolon, colon, hyphen, en and em dash.
_TRAILING_MARK = re.compile("(\\.\\.\\.|\u2026|,|;|:|-|\u2013|\u2014)$")
# Digits are words too: "My order number is 456." is over.
_WORD = re.compile(r"[a-z0-9]+(?:['-][a-z0-9]+)*")


def unfinished_cue(transcript: str) -> str | None:
    """The last word or mark of `transcript` if it shows the sentence is not over, else None.

    Marks: a trailing comma, semicolon, colon, dash or ellipsis. Words (case and final punctuation
    ignored): articles and possessives ("the", "my"), conjunctions ("and", "because"), fillers
    ("um", "uh"), prepositions and auxiliaries ("is", "can"), except in a wh-question (a "?" and a
    wh-word: "What is it for?") and, for auxiliaries, after a pronoun ("Yes, it is.")."""
    text = transcript.strip()
    mark = _TRAILING_MARK.search(text)
    if mark is not None:
        return "..." if mark.group(1) == "\u2026" else mark.group(1)
    words = _words(text)
    if not words:
        return None
    last = words[-1]
    if last in _ARTICLES_AND_POSSESSIVES or last in _CONJUNCTIONS or last in _FILLERS:
        return last
    wh_question = text.endswith("?") and not _WH_WORDS.isdisjoint(words)
    if last in _PREPOSITIONS and not wh_question:
        return last
    if last in _AUXILIARIES and not wh_question and (len(words) < 2 or words[-2] not in _PRONOUNS):
        return last
    if len(words) >= 2:
        before = words[-2]
        if last in _SUBJECTS and before in _QUESTION_AUXILIARIES and _asks_wh(text):
            return f"{before} {last}"
        if last in _INTRODUCERS and before in _COPULAS:
            return f"{before} {last}"
    return None


def doubtful_cue(transcript: str) -> str | None:
    """The last words of `transcript` if they usually mean the sentence goes on but can end it,
    else None: a preposition then "it" outside a wh-question ("a table for it"). Whisper tiny.en
    often writes that "it" after a sentence cut at its preposition, where no "it" was said."""
    words = _words(transcript.strip())
    if len(words) < 2 or words[-1] != "it" or words[-2] not in _PREPOSITIONS:
        return None
    if _asks_wh(transcript):
        return None
    return f"{words[-2]} it"


# A turn that ends in these is over, whatever the model heard in the voice ("Great, thanks a lot,
# bye." scored 0.03 on the demo call and waited 2 s for nothing).
_CLOSINGS = ("bye", "goodbye", "bye-bye", "thanks", "thank you", "cheers", "that's all", "that's it")


def closing_cue(transcript: str) -> str | None:
    """The closing words `transcript` ends with (a goodbye, a thanks), else None."""
    words = _words(transcript.strip())
    tail = " ".join(words[-2:])
    return next((c for c in _CLOSINGS if tail == c or tail.endswith(" " + c)), None)


def _words(text: str) -> list[str]:
    found: list[str] = _WORD.findall(text.lower().replace("\u2019", "'"))
    return found


def _asks_wh(text: str) -> bool:
    """The last sentence of `text` has a wh-word."""
    last_sentence = re.split(r"[.!?]\s+", text.strip())[-1]
    return not _WH_WORDS.isdisjoint(_words(last_sentence))


# -- the model ---------------------------------------------------------------------------------


@functools.cache
def _extractor() -> FeatureExtractor:
    from faster_whisper.feature_extractor import FeatureExtractor

    return FeatureExtractor(feature_size=_N_MELS, sampling_rate=SAMPLE_RATE, chunk_length=WINDOW_S)


def smart_turn_features(pcm: bytes) -> Float32Array:
    """Blocking: Smart Turn's input for 16 kHz int16 mono `pcm`, float32 (1, 80, 800).

    The last 8 s, zero-padded at the front, normalised to zero mean and unit variance, then
    Whisper's log-mel (faster-whisper's extractor, which matches the one Smart Turn was trained
    with to ~1e-6)."""
    if len(pcm) % 2:
        raise AudioFormatError(f"end-of-turn audio must be 16-bit PCM, got an odd {len(pcm)} bytes")
    tail = pcm[-2 * _WINDOW_SAMPLES :]
    x = np.zeros(_WINDOW_SAMPLES, np.float32)
    n = len(tail) // 2
    if n:
        x[-n:] = np.frombuffer(tail, "<i2")
    x /= 32768.0
    x = (x - x.mean()) / np.sqrt(x.var() + _NORM_EPS)
    # padding=0: the 8 s window is exact; the extractor's default pads 160 samples for Whisper.
    mel: Float32Array = _extractor()(x, padding=0)
    return mel[np.newaxis].astype(np.float32, copy=False)


@dataclass(frozen=True, slots=True)
class EndOfTurnPrediction:
    p_complete: float | None
    """P(turn complete), or None when the model had no answer in time (see `outcome`)."""
    outcome: Literal["scored", "busy", "late"]
    """busy: too many requests already waiting, not queued; late: waited past max_queue_ms for
    the model's thread, not scored (its answer would arrive after silence timing had decided)."""
    queued_ms: float = 0.0
    features_ms: float = 0.0
    inference_ms: float = 0.0


@functools.cache
def _ort_errors() -> tuple[type[Exception], ...]:
    # onnxruntime's errors derive from Exception directly, not from RuntimeError.
    from onnxruntime.capi import onnxruntime_pybind11_state as state

    names = ("Fail", "InvalidArgument", "InvalidGraph", "InvalidProtobuf", "NoSuchFile", "NotImplemented",
             "RuntimeException", "EPFail", "ModelLoadCanceled")  # fmt: skip
    found = tuple(getattr(state, n) for n in names if hasattr(state, n))
    return (*found, RuntimeError, ValueError, OSError)


def _check_file(path: Path, size: int | None, sha256: str | None) -> None:
    try:
        actual = path.stat().st_size
    except FileNotFoundError:
        raise EndOfTurnError(
            f"end-of-turn model {path} is missing: reinstall voicerun (see pipeline/models/README.md)"
        ) from None
    except OSError as exc:
        raise EndOfTurnError(f"end-of-turn model {path} cannot be read: {exc.strerror}") from exc
    if size is not None and actual != size:
        raise EndOfTurnError(
            f"end-of-turn model {path} is corrupt: {actual:,} bytes, expected {size:,} "
            "(reinstall voicerun; see pipeline/models/README.md)"
        )
    if sha256 is not None:
        try:
            with path.open("rb") as f:
                digest = hashlib.file_digest(f, "sha256").hexdigest()
        except OSError as exc:
            raise EndOfTurnError(f"end-of-turn model {path} cannot be read: {exc.strerror}") from exc
        if digest != sha256:
            raise EndOfTurnError(
                f"end-of-turn model {path} is corrupt: sha256 {digest}, expected {sha256} "
                "(reinstall voicerun; see pipeline/models/README.md)"
            )


class EndOfTurnModel:
    """Smart Turn v3.2 on one thread of its own. Load one per process: shared_end_of_turn_model().

    One request is scored at a time (features and inference, ~70 ms on 2 cores). Requests that
    arrive faster wait in a bounded queue: with `max_pending` already waiting a new one is answered
    "busy" at once, and one that waited more than `max_queue_ms` is answered "late" without being
    scored. Either way p_complete is None, and the caller falls back to silence timing."""

    def __init__(
        self,
        session: onnxruntime.InferenceSession,
        *,
        max_pending: int = 3,
        max_queue_ms: float = 150.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        """Use load(); this takes an already checked session. `monotonic` (seconds) times the queue."""
        if max_pending < 0:
            raise ValueError(f"end-of-turn max_pending must be >= 0, got {max_pending}")
        if max_queue_ms < 0:
            raise ValueError(f"end-of-turn max_queue_ms must be >= 0, got {max_queue_ms}")
        self._session = session
        self._max_pending = max_pending
        self._max_queue_s = max_queue_ms / 1000
        self._monotonic = monotonic
        # One worker: inference already uses both cores through onnxruntime's 2 intra-op threads,
        # and a second request in parallel would only slow the first.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="voicerun-end-of-turn")
        self._lock = threading.Lock()
        self._in_flight = 0
        self._closed = False
        self.scored = 0
        self.busy_s = 0.0
        """Time its one thread spent scoring: against wall time, how saturated the model is."""

    @classmethod
    def load(
        cls,
        path: Path = MODEL_PATH,
        *,
        size: int | None = MODEL_SIZE_BYTES,
        sha256: str | None = MODEL_SHA256,
        threads: int = 2,
        max_pending: int = 3,
        max_queue_ms: float = 150.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> EndOfTurnModel:
        """Blocking (~0.3 s, of which ~0.2 s imports faster-whisper): check the file's size and
        hash, open it, and score silence once so the first real request is not the slow one."""
        started = time.perf_counter()
        _check_file(path, size, sha256)
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise EndOfTurnError(
                "end-of-turn model needs the onnxruntime package; it is not installed"
            ) from exc
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Spinning threads burn a core between requests that arrive seconds apart, and steal it
        # from the STT and TTS engines on the same two cores.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
        options.log_severity_level = 3
        try:
            session = ort.InferenceSession(
                str(path), sess_options=options, providers=["CPUExecutionProvider"]
            )
        except _ort_errors() as exc:
            raise EndOfTurnError(f"end-of-turn model {path} cannot be loaded: {exc}") from exc
        inputs = {i.name: i.shape for i in session.get_inputs()}
        outputs = [o.name for o in session.get_outputs()]
        if (
            list(inputs) != [_INPUT]
            or list(inputs[_INPUT])[1:] != [_N_MELS, _N_FRAMES]
            or outputs != [_OUTPUT]
        ):
            raise EndOfTurnError(
                f"end-of-turn model {path} is not Smart Turn v3: inputs {inputs}, outputs {outputs}"
            )
        model = cls(session, max_pending=max_pending, max_queue_ms=max_queue_ms, monotonic=monotonic)
        model._infer(smart_turn_features(b""))
        log.info("end_of_turn_model_loaded", path=str(path), threads=threads,
                 load_ms=round((time.perf_counter() - started) * 1000))  # fmt: skip
        return model

    def _infer(self, features: Float32Array) -> float:
        try:
            (logits,) = self._session.run([_OUTPUT], {_INPUT: features})
        except _ort_errors() as exc:
            raise EndOfTurnError(f"end-of-turn model failed on {features.shape} features: {exc}") from exc
        p = float(np.asarray(logits).reshape(-1)[0])
        if not 0.0 <= p <= 1.0:  # also NaN
            raise EndOfTurnError(f"end-of-turn model returned {p}, not a probability")
        return p

    def _score(self, pcm: bytes, submitted: float) -> EndOfTurnPrediction:
        """The worker thread: all numpy and onnxruntime work happens here."""
        queued_ms = (self._monotonic() - submitted) * 1000
        if queued_ms > self._max_queue_s * 1000:
            return EndOfTurnPrediction(None, "late", queued_ms)
        t0 = time.perf_counter()
        features = smart_turn_features(pcm)
        t1 = time.perf_counter()
        p = self._infer(features)
        t2 = time.perf_counter()
        with self._lock:
            self.scored += 1
            self.busy_s += t2 - t0
        return EndOfTurnPrediction(p, "scored", queued_ms, (t1 - t0) * 1000, (t2 - t1) * 1000)

    def _release(self, _future: Future[EndOfTurnPrediction]) -> None:
        with self._lock:
            self._in_flight -= 1

    async def predict(self, pcm_utterance: bytes) -> EndOfTurnPrediction:
        """P(turn complete) for the utterance so far: 16 kHz int16 mono, from ~0.5 s before the
        caller started (the model was trained so) up to now, pause included; only the last 8 s
        count. Raises EndOfTurnError if the model fails, AudioFormatError on an odd byte count.
        Cancelling the caller drops a request still in the queue."""
        if len(pcm_utterance) % 2:
            raise AudioFormatError(
                f"end-of-turn audio must be 16-bit PCM, got an odd {len(pcm_utterance)} bytes"
            )
        future: Future[EndOfTurnPrediction] | None = None
        with self._lock:  # submitting under the lock: aclose() cannot shut the executor in between
            if self._closed:
                raise EndOfTurnError("end-of-turn model is closed")
            if self._in_flight <= self._max_pending:  # one running, max_pending waiting
                self._in_flight += 1
                future = self._executor.submit(self._score, pcm_utterance, self._monotonic())
        if future is None:
            log.warning("end_of_turn_model_busy", waiting=self._max_pending)
            return EndOfTurnPrediction(None, "busy")
        # Outside the lock: a future already done runs _release here, and _release takes the lock.
        future.add_done_callback(self._release)
        prediction = await asyncio.wrap_future(future)
        if prediction.outcome == "late":
            log.warning("end_of_turn_model_late", queued_ms=round(prediction.queued_ms))
        return prediction

    async def aclose(self) -> None:
        """Drop queued requests and wait for the running one. The shared model is never closed."""
        with self._lock:
            self._closed = True
        await asyncio.to_thread(self._executor.shutdown, wait=True, cancel_futures=True)


# -- one model per process ---------------------------------------------------------------------

T = TypeVar("T")


class _LoadOnce(Generic[T]):
    """A value built on first use in a worker thread; concurrent first users share one build.
    The lock is taken in worker threads only, so the event loop never waits on it. A failed build
    is not kept: each later user tries again and gets the same error."""

    def __init__(self, build: Callable[[], T]) -> None:
        self._build = build
        self._lock = threading.Lock()
        self._value: T | None = None

    def _get_blocking(self) -> T:
        with self._lock:
            if self._value is None:
                self._value = self._build()
            return self._value

    @property
    def loaded(self) -> T | None:
        return self._value

    async def get(self) -> T:
        value = self._value
        if value is not None:
            return value
        return await asyncio.to_thread(self._get_blocking)


_shared = _LoadOnce(EndOfTurnModel.load)


async def shared_end_of_turn_model() -> EndOfTurnModel:
    """The process's EndOfTurnModel (the vendored file, 2 threads), loaded on first use: ~0.3 s and
    ~+75 MB RSS, once. Raises EndOfTurnError if the file is missing or corrupt."""
    return await _shared.get()


def loaded_end_of_turn_model() -> EndOfTurnModel | None:
    """The process's model if a call has loaded it (for its statistics), else None."""
    return _shared.loaded
