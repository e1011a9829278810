"""Streaming reframer: transport frames of any size, rate and channel count <-> internal frames."""

from __future__ import annotations

import tracemalloc
from collections.abc import Iterable

import numpy as np
import pytest
import soxr

from pipeline import (
    FRAME_BYTES,
    SAMPLE_RATE,
    AudioFormatError,
    InboundReframer,
    Int16Array,
    OutboundReframer,
)

# soxr dithers int16 output, and a stream and a one-shot call draw the dither in a different order:
# a few steps at most. A filter restarted at every frame boundary is off by thousands (a click).
_DITHER_LSB = 8


def _sine(freq_hz: float, rate: int, seconds: float, level: float = 0.5) -> Int16Array:
    t = np.arange(int(rate * seconds)) / rate
    return np.round(level * 32767 * np.sin(2 * np.pi * freq_hz * t)).astype(np.int16)


def _chunks(x: Int16Array, size: int) -> Iterable[bytes]:
    for i in range(0, len(x), size):
        yield x[i : i + size].tobytes()


def _inbound(
    x: Int16Array, rate: int, frame_samples: int, channels: int = 1, low_latency: bool = False
) -> list[bytes]:
    r = InboundReframer(low_latency=low_latency)
    out: list[bytes] = []
    for chunk in _chunks(x, frame_samples * channels):
        out.extend(r.push(chunk, rate, channels))
    out.extend(r.flush())
    return out


def _one_shot(x: Int16Array, rate: int, to_rate: int, low_latency: bool) -> Int16Array:
    """The whole signal resampled in one call, by the same soxr engine."""
    if rate == to_rate:
        return x
    if not low_latency:
        whole: Int16Array = soxr.resample(x, rate, to_rate, quality="HQ")
        return whole
    stream = soxr.ResampleStream(rate, to_rate, 1, dtype="int16", quality="HQ", vr=True)
    streamed: Int16Array = stream.resample_chunk(x, last=True)
    return streamed


ENGINES = pytest.mark.parametrize("low_latency", [False, True], ids=["block", "low-latency"])


def _samples(frames: Iterable[bytes]) -> Int16Array:
    return np.frombuffer(b"".join(frames), "<i2")


def _peak_hz(x: Int16Array, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(x.astype(np.float64) * np.hanning(len(x))))
    return float(np.argmax(spectrum) * rate / len(x))


def _rms(x: Int16Array) -> float:
    return float(np.sqrt(np.mean(x.astype(np.float64) ** 2)))


@pytest.mark.parametrize(
    ("rate", "frame_samples"),
    [(48_000, 480), (44_100, 441), (48_000, 336), (8_000, 160), (8_000, 56), (16_000, 123)],
    ids=["48k-10ms", "44.1k-441", "48k-7ms", "8k-20ms", "8k-7ms", "16k-odd"],
)
@ENGINES
def test_inbound_matches_one_shot_resample_of_the_whole_signal(
    rate: int, frame_samples: int, low_latency: bool
) -> None:
    x = _sine(440.0, rate, 1.0)
    frames = _inbound(x, rate, frame_samples, low_latency=low_latency)
    assert all(len(f) == FRAME_BYTES for f in frames)
    got = _samples(frames)
    want = _one_shot(x, rate, SAMPLE_RATE, low_latency)
    assert len(want) <= len(got) < len(want) + FRAME_BYTES // 2  # only the last frame's padding
    assert np.abs(got[: len(want)].astype(np.int32) - want).max() <= _DITHER_LSB
    assert not got[len(want) :].any()


def test_16k_mono_passes_through_unchanged() -> None:
    x = _sine(1000.0, SAMPLE_RATE, 0.2)
    assert _samples(_inbound(x, SAMPLE_RATE, 320)).tobytes() == x.tobytes()


@ENGINES
def test_a_sine_through_48k_to_16k_and_back_keeps_its_frequency_and_level(low_latency: bool) -> None:
    x = _sine(1000.0, 48_000, 2.0)
    out = OutboundReframer(48_000, 10, low_latency=low_latency)
    back: list[bytes] = []
    for frame in _inbound(x, 48_000, 480, low_latency=low_latency):
        back.extend(out.push(frame))
    back.extend(out.flush())
    assert all(len(f) == 960 for f in back)
    y = _samples(back)[: len(x)]
    middle = slice(4800, len(x) - 4800)  # away from the filters' run-in and run-out
    assert _peak_hz(y[middle], 48_000) == pytest.approx(1000.0, abs=1.0)
    assert 20 * np.log10(_rms(y[middle]) / _rms(x[middle])) == pytest.approx(0.0, abs=0.1)
    if not low_latency:  # (the variable-rate engine delays by a fraction of a sample instead)
        # no step at any 10 ms boundary: the round trip stays close to the original everywhere
        assert np.abs(y[middle].astype(np.int32) - x[middle]).max() < 0.01 * 32767


@ENGINES
def test_outbound_matches_one_shot_resample_at_odd_transport_frames(low_latency: bool) -> None:
    x = _sine(300.0, SAMPLE_RATE, 1.0)
    out = OutboundReframer(44_100, 10, low_latency=low_latency)  # 441 samples
    frames: list[bytes] = []
    for chunk in _chunks(x, 320):
        frames.extend(out.push(chunk))
    frames.extend(out.flush())
    assert all(len(f) == 882 for f in frames)
    want = _one_shot(x, SAMPLE_RATE, 44_100, low_latency)
    got = _samples(frames)
    assert np.abs(got[: len(want)].astype(np.int32) - want).max() <= _DITHER_LSB


def test_stereo_in_is_mixed_to_mono() -> None:
    left = _sine(440.0, 48_000, 0.5)
    same = np.column_stack([left, left]).reshape(-1)
    silent_right = np.column_stack([left, np.zeros_like(left)]).reshape(-1)
    mono = _samples(_inbound(left, 48_000, 480))
    both = _samples(_inbound(same, 48_000, 480, channels=2))
    assert np.abs(both.astype(np.int32) - mono).max() <= _DITHER_LSB
    half = _samples(_inbound(silent_right, 48_000, 480, channels=2))
    assert _rms(half) == pytest.approx(_rms(mono) / 2, rel=0.01)


def test_outbound_stereo_copies_the_channel() -> None:
    out = OutboundReframer(16_000, 20, channels=2)
    x = _sine(440.0, SAMPLE_RATE, 0.02)
    (frame,) = list(out.push(x.tobytes()))
    assert np.array_equal(np.frombuffer(frame, "<i2").reshape(-1, 2), np.column_stack([x, x]))


@pytest.mark.parametrize(
    ("low_latency", "held_in", "held_out"), [(False, 3, 6), (True, 1.5, 2)], ids=["block", "low-latency"]
)
def test_no_drift_over_a_long_stream(low_latency: bool, held_in: float, held_out: int) -> None:
    """At any moment some audio is inside the filter (soxr's block engine hands out its output a
    block at a time); that hold stays bounded however long the call, and the flush makes the count
    exact."""
    seconds = 120
    tenth = np.zeros(480, np.int16).tobytes()
    inbound = InboundReframer(low_latency=low_latency)
    outbound = OutboundReframer(48_000, 10, low_latency=low_latency)
    internal = transport = 0
    for tick in range(1, seconds * 100 + 1):
        for frame in inbound.push(tenth, 48_000, 1):
            internal += 1
            transport += sum(1 for _ in outbound.push(frame))
        assert 0 <= tick / 2 - internal <= held_in  # in 20 ms frames
        assert 0 <= internal * 2 - transport <= held_out  # in 10 ms frames
    internal += sum(1 for _ in inbound.flush())
    assert internal == seconds * 50


@ENGINES
def test_memory_does_not_grow_with_the_call(low_latency: bool) -> None:
    x = _sine(440.0, 48_000, 0.01)
    pcm = x.tobytes()
    inbound = InboundReframer(low_latency=low_latency)
    outbound = OutboundReframer(48_000, 10, low_latency=low_latency)

    def run(n: int) -> None:
        for _ in range(n):
            for frame in inbound.push(pcm, 48_000, 1):
                for _out in outbound.push(frame):
                    pass

    run(1_000)
    tracemalloc.start()
    try:
        run(100)
        before, _ = tracemalloc.get_traced_memory()
        run(10_000)
        after, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert after - before < 4096


def test_low_latency_holds_telephone_audio_for_less_than_two_frames() -> None:
    held = {}
    for low_latency in (False, True):
        r, out, most = InboundReframer(low_latency=low_latency), 0, 0.0
        for tick in range(1, 501):
            out += sum(1 for _ in r.push(bytes(320), 8_000, 1))
            most = max(most, tick - out)
        held[low_latency] = most * 20
    assert held[True] <= 40 < 100 <= held[False]


@ENGINES
def test_clear_drops_buffered_outbound_audio_at_once(low_latency: bool) -> None:
    out = OutboundReframer(48_000, 30, low_latency=low_latency)
    kept = OutboundReframer(48_000, 30, low_latency=low_latency)
    loud = _sine(1000.0, SAMPLE_RATE, 0.1, level=0.9)
    for c in _chunks(loud, 320):
        list(out.push(c))
        list(kept.push(c))
    assert list(kept.flush())  # some of the 100 ms was still held, in the buffer or the filter
    out.clear()
    assert out.buffered_s == 0
    assert list(out.flush()) == []
    # and nothing of the cleared audio rings on in the filter: what follows is as from a fresh start
    quiet = _sine(300.0, SAMPLE_RATE, 0.1, level=0.1)
    fresh = OutboundReframer(48_000, 30, low_latency=low_latency)
    after = [f for c in _chunks(quiet, 320) for f in out.push(c)] + list(out.flush())
    want = [f for c in _chunks(quiet, 320) for f in fresh.push(c)] + list(fresh.flush())
    assert np.abs(_samples(after).astype(np.int32) - _samples(want)).max() <= _DITHER_LSB


def test_flush_ends_one_stream_and_the_next_starts_fresh() -> None:
    r = InboundReframer()
    x = _sine(440.0, 48_000, 0.105)  # 5.25 internal frames
    first = [f for c in _chunks(x, 480) for f in r.push(c, 48_000, 1)] + list(r.flush())
    second = [f for c in _chunks(x, 480) for f in r.push(c, 48_000, 1)] + list(r.flush())
    assert len(first) == 6
    assert np.abs(_samples(first).astype(np.int32) - _samples(second)).max() <= _DITHER_LSB
    assert list(r.flush()) == []


def test_reset_drops_a_partial_frame() -> None:
    r = InboundReframer()
    assert list(r.push(bytes(300), 16_000, 1)) == []
    r.reset()
    assert list(r.flush()) == []


def test_a_rate_change_mid_stream_loses_no_audio() -> None:
    r = InboundReframer()
    n = sum(1 for c in _chunks(_sine(440.0, 48_000, 1.0), 480) for _ in r.push(c, 48_000, 1))
    n += sum(1 for c in _chunks(_sine(440.0, 8_000, 1.0), 160) for _ in r.push(c, 8_000, 1))
    n += sum(1 for _ in r.flush())
    assert n == 100


def test_iterating_halfway_loses_and_repeats_nothing() -> None:
    r = InboundReframer()
    it = r.push(bytes(FRAME_BYTES * 3), SAMPLE_RATE, 1)
    next(it)
    assert len(list(r.push(bytes(FRAME_BYTES), SAMPLE_RATE, 1))) == 1
    assert len(list(it)) == 2


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: InboundReframer().push(bytes(3), 16_000, 1), "3 bytes are not whole 16-bit samples of 1"),
        (lambda: InboundReframer().push(bytes(6), 16_000, 2), "6 bytes are not whole 16-bit samples of 2"),
        (lambda: InboundReframer().push(bytes(4), 4_000, 1), "sample rate 4000 Hz is outside"),
        (lambda: InboundReframer().push(bytes(4), 16_000, 0), "0 channels"),
        (lambda: OutboundReframer(44_100, 7), "a 7 ms frame is not a whole number of samples at 44100"),
        (lambda: OutboundReframer(48_000, 10).push(bytes(5)), "5 bytes are not whole 16-bit samples"),
    ],
)
def test_bad_audio_is_one_clear_line(call: object, message: str) -> None:
    with pytest.raises(AudioFormatError, match=message) as info:
        call()  # type: ignore[operator]
    assert "\n" not in str(info.value)
