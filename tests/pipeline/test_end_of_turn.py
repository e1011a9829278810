"""End of turn: Smart Turn v3.2's features and loading, its bounded thread, its answers on Hibari
speech, and the end-now / wait decision with the transcript cue."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from pipeline import (
    FRAME_BYTES,
    FRAME_S,
    SAMPLE_RATE,
    AudioFormatError,
    EndOfTurnConfig,
    EndOfTurnError,
    EndOfTurnModel,
    EndOfTurnPrediction,
    closing_cue,
    decide_end_of_turn,
    doubtful_cue,
    frames,
    rms_dbfs,
    shared_end_of_turn_model,
    smart_turn_features,
    unfinished_cue,
)
from pipeline._end_of_turn import MODEL_PATH, MODEL_SHA256, MODEL_SIZE_BYTES, _LoadOnce
from pipeline.providers import HibariConfig, HibariTTS, WhisperConfig, WhisperSTT


class SpeechSample(Protocol):  # the conftest's speech_samples items
    text: str
    pcm: bytes


LEAD_IN_S = 0.5  # Smart Turn was trained on turns that start ~0.5 s before the speech
ASK_AT_S = 0.2  # when the session asks: 200 ms into the pause


def silence(seconds: float) -> bytes:
    return bytes(2 * round(seconds * SAMPLE_RATE))


def utterance(speech: bytes, pause_s: float = ASK_AT_S) -> bytes:
    return silence(LEAD_IN_S) + speech + silence(pause_s)


async def synthesize(text: str) -> bytes:
    tts = HibariTTS(HibariConfig(seed=7))
    return b"".join([chunk async for chunk in tts.synthesize(text)])


async def transcribe(speech: bytes) -> str:
    session = await WhisperSTT(WhisperConfig(interim_interval_s=0)).connect()
    stt = session.begin()
    for frame in frames(np.frombuffer(speech, "<i2")):
        stt.push(frame, True)
    for _ in range(10):
        stt.push(bytes(FRAME_BYTES), False)
    return (await stt.finalize()).text


# -- features ----------------------------------------------------------------------------------


def tone(seconds: float, hz: float = 220.0) -> bytes:
    t = np.arange(round(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    return (np.sin(2 * np.pi * hz * t) * 8000).astype("<i2").tobytes()


@pytest.mark.parametrize("seconds", [0.0, 0.02, 3.0, 8.0, 11.5])
def test_features_have_the_models_input_shape_and_type(seconds: float) -> None:
    features = smart_turn_features(tone(seconds))
    assert features.shape == (1, 80, 800)
    assert features.dtype == np.float32
    assert np.isfinite(features).all()


def test_features_see_the_last_8_s_padded_with_silence_at_the_front() -> None:
    short = tone(2.0)
    assert np.array_equal(smart_turn_features(short), smart_turn_features(silence(6.0) + short))
    long = tone(3.0, hz=440.0) + tone(8.0)
    assert np.array_equal(smart_turn_features(long), smart_turn_features(tone(8.0)))
    # the end of the turn is what counts: the front is padding, the back is the pause
    spectrum = smart_turn_features(short)[0]
    assert spectrum[:, :500].std() < 1e-6 < spectrum[:, 700:].std()


def test_features_do_not_depend_on_the_callers_level() -> None:
    quiet = np.frombuffer(tone(2.0), "<i2") // 8
    loud = (quiet * 8).astype("<i2").tobytes()  # exactly 18 dB louder
    np.testing.assert_allclose(smart_turn_features(quiet.tobytes()), smart_turn_features(loud), atol=1e-4)


def test_features_refuse_audio_that_is_not_16_bit() -> None:
    with pytest.raises(AudioFormatError, match="odd 3 bytes"):
        smart_turn_features(b"\x00\x01\x02")


# -- the model file ----------------------------------------------------------------------------


@pytest.fixture
def model_bytes() -> Iterator[bytes]:
    yield MODEL_PATH.read_bytes()


def one_line_error(path: Path, **kwargs: object) -> str:
    with pytest.raises(EndOfTurnError) as caught:
        EndOfTurnModel.load(path, **kwargs)  # type: ignore[arg-type]
    message = str(caught.value)
    assert "\n" not in message and str(path) in message
    return message


def test_the_vendored_model_is_the_one_from_the_pipecat_wheel(model_bytes: bytes) -> None:
    import hashlib

    assert len(model_bytes) == MODEL_SIZE_BYTES
    assert hashlib.sha256(model_bytes).hexdigest() == MODEL_SHA256
    assert (MODEL_PATH.parent / "LICENSE-smart-turn").read_text().startswith("BSD 2-Clause License")


def test_a_missing_model_file_is_one_clear_error(tmp_path: Path) -> None:
    message = one_line_error(tmp_path / "smart-turn.onnx")
    assert "missing" in message and "reinstall" in message


def test_a_truncated_model_file_is_one_clear_error(tmp_path: Path, model_bytes: bytes) -> None:
    path = tmp_path / "smart-turn.onnx"
    path.write_bytes(model_bytes[: len(model_bytes) // 2])
    message = one_line_error(path)
    assert "corrupt" in message and "4,339,591 bytes, expected 8,679,182" in message


def test_a_model_file_with_a_changed_byte_is_one_clear_error(tmp_path: Path, model_bytes: bytes) -> None:
    path = tmp_path / "smart-turn.onnx"
    damaged = bytearray(model_bytes)
    damaged[len(damaged) // 2] ^= 0xFF
    path.write_bytes(bytes(damaged))
    message = one_line_error(path)
    assert "corrupt" in message and f"expected {MODEL_SHA256}" in message


def test_a_file_that_is_not_a_model_is_one_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "smart-turn.onnx"
    path.write_bytes(b"not an onnx model")
    assert "cannot be loaded" in one_line_error(path, size=None, sha256=None)


# -- loading once, running off the loop --------------------------------------------------------


async def test_the_model_loads_once_when_two_callers_ask_at_once() -> None:
    builds = 0

    def build() -> EndOfTurnModel:
        nonlocal builds
        builds += 1
        return EndOfTurnModel.load()

    once = _LoadOnce(build)  # what shared_end_of_turn_model() uses, on a fresh slot
    first, second = await asyncio.gather(once.get(), once.get())
    assert first is second and builds == 1
    assert await once.get() is first and builds == 1
    await first.aclose()
    assert await shared_end_of_turn_model() is await shared_end_of_turn_model()


async def test_a_model_that_fails_to_load_fails_every_caller_the_same_way(tmp_path: Path) -> None:
    once = _LoadOnce(lambda: EndOfTurnModel.load(tmp_path / "absent.onnx"))
    results = await asyncio.gather(once.get(), once.get(), return_exceptions=True)
    assert [type(r) for r in results] == [EndOfTurnError, EndOfTurnError]


async def test_predict_never_blocks_the_event_loop(
    caplog: pytest.LogCaptureFixture, speech_samples: tuple[SpeechSample, ...]
) -> None:
    model = await shared_end_of_turn_model()
    pcm = utterance(speech_samples[0].pcm)
    loop = asyncio.get_running_loop()
    loop.set_debug(True)
    # predict's own share of the loop is microseconds; features and inference (~70 ms) would
    # show up here if they ran on it.
    loop.slow_callback_duration = 0.02
    with caplog.at_level(logging.WARNING, logger="asyncio"):
        for _ in range(3):
            prediction = await model.predict(pcm)
            assert prediction.outcome == "scored"
    slow = [r.getMessage() for r in caplog.records if r.name == "asyncio" and "Executing" in r.getMessage()]
    assert slow == []


class Gate:
    """Holds the model's one worker thread, so requests queue behind it deterministically."""

    def __init__(self, model: EndOfTurnModel) -> None:
        self._release = threading.Event()
        # The executor is private; occupying it is the only way to make the queue fill on demand.
        model._executor.submit(self._release.wait, 60)

    def open(self) -> None:
        self._release.set()


async def queue(model: EndOfTurnModel, n: int) -> list[asyncio.Task[EndOfTurnPrediction]]:
    """n predict() calls in flight, in order, each already in the model's queue."""
    tasks = [asyncio.create_task(model.predict(tone(1.0))) for _ in range(n)]
    # Not a timed wait: a new task's first step runs on the next loop iteration, and predict()
    # takes its place in the queue before its first await.
    await asyncio.sleep(0)
    return tasks


async def test_requests_past_the_queue_bound_are_answered_busy_at_once() -> None:
    model = EndOfTurnModel.load(max_pending=1, monotonic=lambda: 0.0)  # nobody is ever late
    gate = Gate(model)
    try:
        queued = await queue(model, 2)
        busy = await model.predict(tone(1.0))
        assert (busy.p_complete, busy.outcome) == (None, "busy")
        assert not any(q.done() for q in queued)
    finally:
        gate.open()
    assert [(await q).outcome for q in queued] == ["scored", "scored"]
    await model.aclose()


async def test_a_request_that_waited_too_long_is_answered_late_without_being_scored() -> None:
    now = [0.0]
    model = EndOfTurnModel.load(max_queue_ms=150, monotonic=lambda: now[0])
    gate = Gate(model)
    try:
        (waited_long,) = await queue(model, 1)
        now[0] = 0.151
        (waited_enough,) = await queue(model, 1)
    finally:
        gate.open()
    late = await waited_long
    assert (late.p_complete, late.outcome, late.inference_ms) == (None, "late", 0.0)
    assert late.queued_ms == pytest.approx(151)
    assert (await waited_enough).outcome == "scored"
    await model.aclose()


async def test_a_cancelled_request_frees_its_place_in_the_queue() -> None:
    model = EndOfTurnModel.load(max_pending=0, monotonic=lambda: 0.0)
    gate = Gate(model)
    try:
        (first,) = await queue(model, 1)
        assert (await model.predict(tone(1.0))).outcome == "busy"
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        (second,) = await queue(model, 1)
    finally:
        gate.open()
    assert (await second).outcome == "scored"
    await model.aclose()
    with pytest.raises(EndOfTurnError, match="closed"):
        await model.predict(tone(1.0))


# -- the model on speech -----------------------------------------------------------------------


async def test_complete_sentences_score_complete(speech_samples: tuple[SpeechSample, ...]) -> None:
    model = await shared_end_of_turn_model()
    scores = {s.text: (await model.predict(utterance(s.pcm))).p_complete for s in speech_samples}
    assert all(p is not None and p > 0.5 for p in scores.values()), scores


def before_longest_pause(pcm: bytes) -> bytes:
    """The speech up to the longest pause inside it (a comma's, in Hibari)."""
    quiet = [rms_dbfs(f) < -45.0 for f in frames(np.frombuffer(pcm, "<i2"))]
    first, last = quiet.index(False), len(quiet) - quiet[::-1].index(False)
    best_start, best_len, run = 0, 0, 0
    for k in range(first, last):
        run = run + 1 if quiet[k] else 0
        if run > best_len:
            best_start, best_len = k + 1 - run, run
    assert best_len * FRAME_S >= 0.1, "no pause inside the speech"
    return pcm[: best_start * FRAME_BYTES]


async def test_a_sentence_cut_at_a_mid_sentence_pause_scores_incomplete() -> None:
    # Spoken whole with a pause after "is", then cut there: the prosody of a speaker who goes on.
    speech = before_longest_pause(await synthesize("My order number is, four five six."))
    prediction = await (await shared_end_of_turn_model()).predict(utterance(speech))
    assert prediction.p_complete is not None and prediction.p_complete < 0.5


async def test_a_cut_sentence_the_model_calls_complete_is_held_open_by_its_transcript() -> None:
    speech = await synthesize("I would like to book a table for")
    p = (await (await shared_end_of_turn_model()).predict(utterance(speech))).p_complete
    transcript = await transcribe(speech)

    decision = decide_end_of_turn(EndOfTurnConfig(), p, transcript, silence_ms=ASK_AT_S * 1000)

    assert (decision.action, decision.reason) == ("wait", "unfinished_text"), (p, transcript)
    assert decision.wait_ms == pytest.approx(2000 - ASK_AT_S * 1000)


# -- the decision ------------------------------------------------------------------------------

CONFIG = EndOfTurnConfig()

ARTICLES = "a an the my your our their its every".split()
CONJUNCTIONS = "and or but nor because cause cuz if unless although whereas whether than plus".split()
FILLERS = "um umm uh uhh uhm er erm hmm hm gonna wanna".split()
PREPOSITIONS = (
    "to for of with from at into onto about toward towards via per between among amongst during "
    "until till including except regarding concerning within upon as"
).split()
AUXILIARIES = "is are was were am will would can could should shall must might has have had".split()
UNFINISHED_WORDS = ARTICLES + CONJUNCTIONS + FILLERS + PREPOSITIONS + AUXILIARIES

COMPLETE = [
    "Please send the invoice to my office by Friday.",
    "I would like to book a table for two people tonight",
    "My order number is four five six.",
    "My order number is 456.",
    "It costs $12.50",
    "Call me at 5-5-5",
    "Yes, it is.",
    "I think we can.",
    "That's all I have.",
    "What is it for?",
    "Where are you from?",
    "Who am I speaking to?",
    "Is it?",
    "Hang up.",
    "Mm-hmm.",
    "How are you?",
    "Where is it?",
    "Do you?",
    "I love the lemon tart, do you?",
    "It's number one.",
    "I'd like to change my number.",
    "No",
    "I'll take this.",
    "I like it, though.",
    "It\u2019s",
    "",
    "   ",
    "?!.",
]


@pytest.mark.parametrize("word", UNFINISHED_WORDS)
@pytest.mark.parametrize("form", ["I would like {w}", "I would like {w}.", "I WOULD LIKE {W}!", "{W}"])
def test_a_turn_ending_in_a_word_that_cannot_end_a_sentence_is_unfinished(word: str, form: str) -> None:
    text = form.format(w=word, W=word.capitalize())
    assert unfinished_cue(text) == word


@pytest.mark.parametrize("word", PREPOSITIONS + AUXILIARIES)
def test_a_question_may_end_in_a_preposition_or_an_auxiliary(word: str) -> None:
    assert unfinished_cue(f"Who are you talking {word}?") is None


@pytest.mark.parametrize(
    ("text", "cue"),
    [("Can you send it to?", "to"), ("Could you tell me if my account is?", "is"), ("Is it for?", "for")],
)
def test_a_yes_no_question_ending_in_a_preposition_or_an_auxiliary_was_cut(text: str, cue: str) -> None:
    assert unfinished_cue(text) == cue  # Whisper writes a "?" on a question cut short


@pytest.mark.parametrize("word", AUXILIARIES)
@pytest.mark.parametrize(
    "pronoun", "I you we they he she it that this there here who what where which".split()
)
def test_an_auxiliary_after_a_pronoun_is_a_short_answer(word: str, pronoun: str) -> None:
    assert unfinished_cue(f"Yes, {pronoun} {word}.") is None
    assert unfinished_cue(f"My order number {word}") == word


@pytest.mark.parametrize("mark", [",", ";", ":", "-", "\u2013", "\u2014", "...", "\u2026"])
def test_a_turn_ending_in_a_pause_mark_is_unfinished(mark: str) -> None:
    assert unfinished_cue(f"My order number is four five six{mark}  ") == (
        "..." if mark == "\u2026" else mark
    )


@pytest.mark.parametrize("text", COMPLETE)
def test_complete_sentences_have_no_cue(text: str) -> None:
    assert unfinished_cue(text) is None


@pytest.mark.parametrize(
    ("text", "cue"),
    [("What time do you?", "do you"), ("What time do you", "do you"), ("Where can I", "can i"),
     ("Thanks. How much would they", "would they"), ("I'm calling about my order. It's number", "it's number"),
     ("The table is number", "is number")],
)  # fmt: skip
def test_a_question_without_its_verb_and_a_number_not_yet_said_are_unfinished(text: str, cue: str) -> None:
    assert unfinished_cue(text) == cue


@pytest.mark.parametrize(
    ("text", "cue"),
    [("I would like to book a table for it.", "for it"), ("Can I pay for it", "for it"),
     ("I want to talk about it.", "about it"), ("What is it for? I paid for it", "for it"),
     ("What did you do with it?", None), ("I like it.", None), ("It is for it", "for it")],
)  # fmt: skip
def test_a_preposition_then_it_is_doubtful(text: str, cue: str | None) -> None:
    assert unfinished_cue(text) is None
    assert doubtful_cue(text) == cue


@pytest.mark.parametrize(
    ("text", "closing"),
    [("Great Thanks a lot, bye.", "bye"), ("Okay, thank you!", "thank you"), ("That's all.", "that's all"),
     ("Thanks a lot", None), ("Bye the way, I", None), ("I want to say goodbye to", None)],
)  # fmt: skip
def test_a_goodbye_ends_the_turn_even_when_the_model_hears_more(text: str, closing: str | None) -> None:
    assert closing_cue(text) == closing
    decision = decide_end_of_turn(CONFIG, 0.03, text, 300.0)
    assert (decision.action == "end") == (closing is not None)


@given(st.text())
def test_any_text_gives_a_cue_or_none(text: str) -> None:
    cue = unfinished_cue(text)
    marks = (",", ";", ":", "-", "\u2013", "\u2014", "...")
    assert cue is None or cue in UNFINISHED_WORDS or cue in marks or len(cue.split()) == 2
    doubt = doubtful_cue(text)
    assert doubt is None or (doubt.endswith(" it") and doubt.split()[0] in PREPOSITIONS)


@given(st.text(alphabet=st.characters(codec="ascii")), st.sampled_from(UNFINISHED_WORDS))
def test_appending_an_unfinished_word_always_leaves_the_turn_open(text: str, word: str) -> None:
    # an auxiliary needs a noun before it: after a pronoun it is a short answer
    ending = f"order {word}" if word in AUXILIARIES else word
    assert unfinished_cue(f"{text} {ending}") == word


def config(threshold: float, ask_ms: int, no_score_ms: int, max_ms: int, doubtful_ms: int) -> EndOfTurnConfig:
    return EndOfTurnConfig(
        threshold, ask_after_ms=ask_ms, no_score_silence_ms=no_score_ms, max_wait_ms=max_ms,
        doubtful_wait_ms=doubtful_ms,
    )  # fmt: skip


configs = st.tuples(
    st.floats(0.01, 1.0), st.integers(0, 5000), st.integers(0, 5000), st.integers(0, 5000),
    st.integers(0, 6000),
).map(lambda t: config(t[0], *sorted(t[1:4]), t[4]))  # fmt: skip
scores = st.none() | st.floats(0.0, 1.0)
silences = st.floats(0.0, 6000.0)
transcripts = (
    st.text(max_size=40)
    | st.sampled_from(COMPLETE)
    | st.sampled_from(UNFINISHED_WORDS).map("I would like {}".format)
    | st.sampled_from(PREPOSITIONS).map("I would like to pay {} it".format)
)


@given(configs, scores, transcripts, silences)
@example(CONFIG, 0.99, "I would like to book a table for", 200.0)
@example(CONFIG, 0.2, "My order number is four five six.", 200.0)
@example(CONFIG, 0.99, "I would like to book a table for it.", 200.0)
@example(CONFIG, None, "I would like to book a table for it.", 400.0)
@example(CONFIG, 0.03, "Great, thanks a lot, bye.", 250.0)
def test_the_decision(config: EndOfTurnConfig, p: float | None, text: str, silence_ms: float) -> None:
    decision = decide_end_of_turn(config, p, text, silence_ms)
    cue = unfinished_cue(text)

    doubt = doubtful_cue(text)
    reached = silence_ms + 1e-6  # the decision's tolerance for float rounding
    doubting = doubt is not None and reached < min(config.doubtful_wait_ms, config.max_wait_ms)
    if reached >= config.max_wait_ms:
        expected = ("end", "max_wait")
    elif cue is not None:
        expected = ("wait", "unfinished_text")
    elif p is None:
        if doubting and reached < max(config.no_score_silence_ms, config.doubtful_wait_ms):
            expected = ("wait", "doubtful_text")
        else:
            expected = ("end" if reached >= config.no_score_silence_ms else "wait", "no_score")
    elif p >= config.threshold:
        expected = ("wait", "doubtful_text") if doubting else ("end", "complete")
    elif closing_cue(text) is not None:
        expected = ("end", "closing_text")
    else:
        expected = ("wait", "incomplete")
    assert (decision.action, decision.reason) == expected
    cued = {"unfinished_text": cue, "doubtful_text": doubt, "closing_text": closing_cue(text)}
    assert decision.cue == cued.get(decision.reason)
    # Waiting is bounded, and waiting as long as told ends the turn if nothing changes.
    if decision.action == "end":
        assert decision.wait_ms == 0
    else:
        assert 0 < decision.wait_ms <= config.max_wait_ms - silence_ms
        later = decide_end_of_turn(config, p, text, silence_ms + decision.wait_ms)
        assert later.action == "end"


@given(configs, scores, transcripts, silences, silences)
def test_more_silence_never_reopens_a_turn(
    config: EndOfTurnConfig, p: float | None, text: str, a: float, b: float
) -> None:
    shorter, longer = sorted((a, b))
    if decide_end_of_turn(config, p, text, shorter).action == "end":
        assert decide_end_of_turn(config, p, text, longer).action == "end"


@given(configs, st.floats(0.0, 1.0), st.floats(0.0, 1.0), transcripts, silences)
def test_a_higher_score_never_reopens_a_turn(
    config: EndOfTurnConfig, a: float, b: float, text: str, silence_ms: float
) -> None:
    lower, higher = sorted((a, b))
    if decide_end_of_turn(config, lower, text, silence_ms).action == "end":
        assert decide_end_of_turn(config, higher, text, silence_ms).action == "end"


@given(configs, scores, silences, st.sampled_from(UNFINISHED_WORDS))
def test_an_unfinished_transcript_ends_the_turn_only_at_max_wait(
    config: EndOfTurnConfig, p: float | None, silence_ms: float, word: str
) -> None:
    decision = decide_end_of_turn(config, p, f"I would like {word}", silence_ms)
    assert (decision.action == "end") == (silence_ms + 1e-6 >= config.max_wait_ms)


@pytest.mark.parametrize(
    ("p", "silence_ms", "message"),
    [(1.5, 0.0, "p_complete"), (-0.1, 0.0, "p_complete"), (float("nan"), 0.0, "p_complete"),
     (0.5, -1.0, "silence_ms"), (0.5, float("nan"), "silence_ms")],
)  # fmt: skip
def test_the_decision_refuses_impossible_inputs(p: float, silence_ms: float, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        decide_end_of_turn(CONFIG, p, "", silence_ms)


@pytest.mark.parametrize(
    "kwargs",
    [{"threshold": 0.0}, {"threshold": 1.1}, {"ask_after_ms": -1}, {"ask_after_ms": 400},
     {"no_score_silence_ms": 3000}, {"max_wait_ms": 100}],
)  # fmt: skip
def test_the_config_refuses_impossible_settings(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="end-of-turn"):
        EndOfTurnConfig(**kwargs)  # type: ignore[arg-type]
