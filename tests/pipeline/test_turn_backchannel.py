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
def test_short_bursts_of_backchannel_words_and_their_mishearings_do_not_interrupt(text: str) -> None:
    decision = classify_overlap(text, 600, DEFAULT_BACKCHANNELS, max_ms=1200)
    assert (decision.action, decision.reason) == ("backchannel", "backchannel_words")


@pytest.mark.parametrize(
    "text",
    ["Stop.", "Wait.", "No.", "What?", "Hold on.", "Excuse me.", "Human.", "Okay, stop.",
     "Sorry?", "Yes please, book it.", "Okay, but what about Sunday?", "Cancel it."],
)  # fmt: skip
def test_short_words_that_ask_for_the_floor_interrupt(text: str) -> None:
    decision = classify_overlap(text, 400, DEFAULT_BACKCHANNELS, max_ms=1200)
    assert decision.action == "interrupt" and decision.reason == "not_a_backchannel"


def test_the_audio_decides_too_a_long_burst_interrupts_whatever_its_words() -> None:
    decision = classify_overlap("Okay.", 1500, DEFAULT_BACKCHANNELS, max_ms=1200)
    assert (decision.action, decision.reason, decision.words) == ("interrupt", "too_long", ("okay",))


def test_more_than_two_backchannel_phrases_is_a_turn() -> None:
    decision = classify_overlap("Yeah, sure, got it.", 900, DEFAULT_BACKCHANNELS, max_ms=1200)
    assert (decision.action, decision.reason) == ("interrupt", "too_many_words")


def test_no_words_is_not_an_interruption() -> None:
    assert classify_overlap(" ", 300, DEFAULT_BACKCHANNELS, max_ms=1200).reason == "no_words"


def test_the_phrase_list_is_the_workflows_own() -> None:
    assert classify_overlap("Indeed.", 400, ("indeed",), max_ms=1200).action == "backchannel"
    assert classify_overlap("Okay.", 400, ("indeed",), max_ms=1200).action == "interrupt"
