"""The overlap decision: is speech over the agent a backchannel (carry on) or an interruption?"""

from __future__ import annotations

import pytest

from pipeline import DEFAULT_BACKCHANNELS, classify_overlap


@pytest.mark.parametrize(
    "text",
    ["Uh-huh.", "uh huh", "Mm-hmm.", "Mhm.", "Mm-hm.", "Aha", "Mama", "Hmm.", "Okay. Okay.",
     "okay, okay", "Yeah yeah yeah.", "All right.", "Alright.", "I thought.", "I see.", "Got it.",
     "Sure, sure.", "Right.", "Oh, I see.", "Yeah, I see.", "Oh okay.", "Thank you."],
)  # fmt: skip
def test_backchannel_words_and_their_mishearings_do_not_interrupt(text: str) -> None:
    # 900 ms: past a short burst, so the words decide
    decision = classify_overlap(text, 900, DEFAULT_BACKCHANNELS, max_ms=1200)
    assert (decision.action, decision.reason) == ("backchannel", "backchannel_words")


@pytest.mark.parametrize(
    "text",
    ["Stop.", "Wait.", "No.", "What?", "Hold on.", "Excuse me.", "Human.", "Okay, stop.",
     "Sorry?", "Hello?", "Cancel it.", "Two.", "4 5 6", "Weight Weight Weight weight"],
)  # fmt: skip
def test_short_words_that_take_the_floor_interrupt(text: str) -> None:
    decision = classify_overlap(text, 400, DEFAULT_BACKCHANNELS, max_ms=1200)
    assert (decision.action, decision.reason) == ("interrupt", "takes_the_floor")


@pytest.mark.parametrize("text", ["a hul", "Come in", "For a minute.", "It hurts.", "F", "Icy."])
def test_a_short_burst_is_a_backchannel_whatever_a_small_stt_wrote_for_it(text: str) -> None:
    # What Whisper tiny.en wrote for 0.3-0.7 s of "uh-huh" and "mhm" on the conversation benchmark.
    decision = classify_overlap(text, 450, DEFAULT_BACKCHANNELS, max_ms=1200)
    assert (decision.action, decision.reason) == ("backchannel", "short_burst")


@pytest.mark.parametrize(
    "text", ["Yes please, book it.", "Okay, what about Sunday?", "Let me think about it."]
)
def test_a_longer_burst_of_other_words_interrupts(text: str) -> None:
    decision = classify_overlap(text, 1000, DEFAULT_BACKCHANNELS, max_ms=1200)
    assert decision.action == "interrupt"


def test_the_audio_decides_too_a_long_burst_interrupts_whatever_its_words() -> None:
    decision = classify_overlap("Okay.", 1500, DEFAULT_BACKCHANNELS, max_ms=1200)
    assert (decision.action, decision.reason, decision.words) == ("interrupt", "too_long", ("okay",))


def test_more_than_two_backchannel_phrases_is_a_turn() -> None:
    decision = classify_overlap("Yeah, sure, got it.", 1000, DEFAULT_BACKCHANNELS, max_ms=1200)
    assert (decision.action, decision.reason) == ("interrupt", "too_many_words")


def test_no_words_is_not_an_interruption() -> None:
    assert classify_overlap(" ", 300, DEFAULT_BACKCHANNELS, max_ms=1200).reason == "no_words"


def test_the_phrase_list_is_the_workflows_own() -> None:
    assert classify_overlap("Indeed.", 900, ("indeed",), max_ms=1200).action == "backchannel"
    assert classify_overlap("Okay.", 900, ("indeed",), max_ms=1200).action == "interrupt"
