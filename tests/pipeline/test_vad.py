"""Endpointing on synthetic audio: when utterances start and end, pre-roll, noise rejection."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline import FRAME_S, SAMPLE_RATE, Endpointer, VADConfig, frames
from pipeline.testing import speech_like


def feed(ep: Endpointer, audio: np.ndarray) -> list[tuple[float, object]]:
    events = []
    for k, f in enumerate(frames(audio)):
        r = ep.process(f, k * FRAME_S)
        if r.event:
            events.append((k * FRAME_S, r))
    return events


def silence(s: float) -> np.ndarray:
    return np.zeros(int(s * SAMPLE_RATE), np.int16)


def test_start_after_voiced_duration_with_preroll_and_end_after_silence() -> None:
    cfg = VADConfig(start_voiced_ms=60, end_silence_ms=300, preroll_ms=200)
    audio = np.concatenate([silence(1.0), speech_like(1.2), silence(1.0)])
    events = feed(Endpointer(cfg), audio)
    assert [r.event for _, r in events] == ["start", "end"]
    (t_start, start), (t_end, end) = events
    assert start.onset_s == pytest.approx(1.0, abs=0.04)
    assert t_start == pytest.approx(start.onset_s + 0.04, abs=0.001)  # third voiced frame
    assert len(start.preroll) * FRAME_S == pytest.approx(0.2 + 0.04, abs=0.001)
    # last voiced audio is where the speech really stops, not where webrtcvad's hangover ends
    assert end.last_voiced_s == pytest.approx(2.2, abs=0.03)
    assert t_end == pytest.approx(end.last_voiced_s + 0.3 - FRAME_S, abs=0.021)


def test_short_pauses_inside_an_utterance_do_not_end_it() -> None:
    audio = np.concatenate([speech_like(0.8), silence(0.2), speech_like(0.8), silence(0.5)])
    events = feed(Endpointer(VADConfig(end_silence_ms=300)), audio)
    assert [r.event for _, r in events] == ["start", "end"]


def test_a_click_shorter_than_the_start_duration_is_not_speech() -> None:
    audio = np.concatenate([silence(0.5), speech_like(0.04), silence(0.5)])
    assert feed(Endpointer(VADConfig(start_voiced_ms=100)), audio) == []


def test_quiet_noise_is_not_speech() -> None:
    noise = (np.random.default_rng(1).normal(0, 30, SAMPLE_RATE * 2)).astype(np.int16)  # about -60 dBFS
    assert feed(Endpointer(VADConfig(mode=0)), noise) == []


def test_invalid_config_is_rejected() -> None:
    with pytest.raises(ValueError, match="mode"):
        VADConfig(mode=5)
