"""Endpointing on synthetic audio: when utterances start and end, pre-roll, noise rejection."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline import FRAME_S, SAMPLE_RATE, Endpointer, VADConfig, frames
from pipeline.testing import fricative, speech_like


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


def _rumble(seconds: float, dbfs: float, *, seed: int = 2) -> np.ndarray:
    """Room noise: pink (power falling 3 dB an octave), so mostly low frequencies."""
    rng = np.random.default_rng(seed)
    n = int(seconds * SAMPLE_RATE)
    spectrum = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n, 1 / SAMPLE_RATE)
    spectrum[1:] /= np.sqrt(f[1:])
    spectrum[0] = 0
    x = np.fft.irfft(spectrum, n)
    x *= 10 ** (dbfs / 20) / np.sqrt(np.mean(x**2))
    return (x * 32767).astype(np.int16)


def onsets(ep: Endpointer, audio: np.ndarray) -> list[float]:
    return [k * FRAME_S for k, f in enumerate(frames(audio)) if ep.process(f, k * FRAME_S).onset]


def test_an_unvoiced_onset_is_reported_before_the_vad_calls_it_speech() -> None:
    # "Stop": 140 ms of /s/ before the vowel. The onset is its first frame; the VAD's start comes
    # only after 60 ms of the vowel.
    audio = np.concatenate([silence(1.0), fricative(0.14, -50), speech_like(0.8), silence(0.5)])
    found = onsets(Endpointer(VADConfig()), audio)
    assert found and found[0] == pytest.approx(1.0, abs=0.001)
    start = feed(Endpointer(VADConfig()), audio)[0][0]
    assert start >= 1.0 + 0.14 + 0.04 - 1e-9


def test_a_fricative_is_found_in_low_room_noise_louder_than_itself() -> None:
    # Over the whole band the hiss lifts the room noise by ~5 dB, under the margin; it stands out
    # only in the high band.
    room = _rumble(3.0, -40)
    hiss = np.zeros_like(room)
    hiss[int(2.0 * SAMPLE_RATE) : int(2.14 * SAMPLE_RATE)] = fricative(0.14, -36)
    found = onsets(Endpointer(VADConfig()), (room.astype(np.int32) + hiss).astype(np.int16))
    assert found and 2.0 - 1e-9 <= found[0] <= 2.02 + 1e-9
    assert all(t >= 2.0 - 1e-9 for t in found), "steady room noise is not an onset"


def test_a_line_that_turns_noisier_is_learnt_within_seconds() -> None:
    # A 12 dB step in the noise is an onset at first, then the new floor.
    audio = np.concatenate([_rumble(2.0, -55, seed=3), _rumble(6.0, -43, seed=4)])
    found = onsets(Endpointer(VADConfig()), audio)
    assert found and found[0] == pytest.approx(2.0, abs=0.021)
    assert max(found) < 2.0 + 5.0


def test_no_onset_inside_an_utterance_or_below_the_absolute_floor() -> None:
    ep = Endpointer(VADConfig())
    assert onsets(ep, np.concatenate([silence(1.0), fricative(0.5, -65)])) == []
    audio = np.concatenate([silence(0.5), speech_like(1.0), fricative(0.1, -30), speech_like(0.5)])
    found = onsets(Endpointer(VADConfig()), audio)
    assert found and found[0] == pytest.approx(0.5, abs=0.001)
    assert max(found) < 0.5 + 0.06, "nothing after the VAD has started the utterance"
