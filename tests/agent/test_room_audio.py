"""Room audio through real livekit frames: a loopback AudioSource -> LocalAudioTrack -> AudioStream,
no room. The source plays in real time, so each test carries a few hundred ms of audio; every wait
is on frames heard, never on a timer. Arrival stamps and captures caught in flight, which need
control of time and of the SDK, use scripted stand-ins."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pytest
import soxr
from livekit import rtc

from agent._room_audio import RoomCaller, RoomSink
from pipeline import FRAME_SAMPLES, SAMPLE_RATE, BufferedSink, Int16Array, OutboundReframer, RealClock, frames

AMPLITUDE = 8000
WAIT_S = 10  # a safety net for a broken build, not a synchronisation


def tone(freq_hz: float, seconds: float, rate: int) -> Int16Array:
    """Starts at a zero crossing, with no step (and ends at one when seconds x freq is whole)."""
    n = round(seconds * rate)
    return np.round(AMPLITUDE * np.sin(2 * np.pi * freq_hz * np.arange(n) / rate)).astype(np.int16)


def peak_hz(x: Int16Array, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(x.astype(np.float64) * np.hanning(len(x))))
    return float(np.argmax(spectrum)) * rate / len(x)


def is_blank(tick: bytes) -> bool:
    return tick.count(0) == len(tick)


def nonblank(ticks: Sequence[bytes]) -> list[bytes]:
    return [t for t in ticks if not is_blank(t)]


DITHER = 4
"""soxr dithers its int16 output, so two resamplings of the same audio differ by a couple of LSB."""


def same(a: bytes, b: bytes) -> bool:
    x, y = np.frombuffer(a, np.int16), np.frombuffer(b, np.int16)
    return len(x) == len(y) and int(np.max(np.abs(x.astype(np.int32) - y), initial=0)) <= DITHER


def all_same(a: Sequence[bytes], b: Sequence[bytes]) -> bool:
    return len(a) == len(b) and all(map(same, a, b))


def heard_tick(ticks: Sequence[bytes], tick: bytes) -> bool:
    return any(same(t, tick) for t in ticks)


def as_ticks(pcm: bytes, rate: int = 48_000) -> list[bytes]:
    """Cut into the source's 10 ms ticks, the frames the loopback hands back."""
    n = rate // 100 * 2
    return [pcm[i : i + n] for i in range(0, len(pcm), n)]


def played(internal: Sequence[bytes], *, flush: bool = True) -> list[bytes]:
    """What a RoomSink gives its source for these internal frames, as ticks without blanks."""
    reframer = OutboundReframer(48_000, 20)
    out = [f for pcm in internal for f in reframer.push(pcm)]
    if flush:
        out += reframer.flush()
    return nonblank(as_ticks(b"".join(out)))


class Listener:
    """The far end of a loopback: every 10 ms tick the source plays. An empty source sends nothing
    for 100 ms, then blank ticks."""

    def __init__(self, source: rtc.AudioSource) -> None:
        track = rtc.LocalAudioTrack.create_audio_track("agent", source)
        self._stream = rtc.AudioStream(track, sample_rate=source.sample_rate, num_channels=1)
        self.ticks: list[bytes] = []
        self._changed = asyncio.Event()
        self._task = asyncio.create_task(self._listen())

    async def _listen(self) -> None:
        async for event in self._stream:
            self.ticks.append(event.frame.data.tobytes())
            self._changed.set()

    async def until(self, done: Callable[[list[bytes]], bool]) -> None:
        async with asyncio.timeout(WAIT_S):
            while not done(self.ticks):
                self._changed.clear()
                await self._changed.wait()

    async def aclose(self) -> None:
        await self._stream.aclose()
        await self._task


def joint(heard: list[bytes], expected: list[bytes]) -> tuple[int, int] | None:
    """(p, d) when heard == expected[:p] + expected[p + d:]: d = 1 skipped a tick at p, d = -1 played
    the tick before p twice, d = 0 is exact. None when heard is anything else."""
    d = len(expected) - len(heard)
    if abs(d) > 1:
        return None
    p = 0
    while p < len(heard) and p < len(expected) and same(heard[p], expected[p]):
        p += 1
    for q in range(p, max(p - 2, -1), -1):  # a repeated tick can match the prefix by one more
        if q + d >= 0 and all_same(heard[q:], expected[q + d :]):
            return q, d
    return None


# -- RoomCaller --------------------------------------------------------------------------------


class Tap:
    """Hands the stream's events to RoomCaller and keeps a copy; ends the stream once the tone has
    passed and `tail` blank frames followed it."""

    def __init__(self, stream: rtc.AudioStream, tail: int = 5) -> None:
        self._stream = stream
        self._tail = tail
        self.received: list[rtc.AudioFrame] = []
        self._heard_tone = False
        self._blanks = 0

    def __aiter__(self) -> Tap:
        return self

    async def __anext__(self) -> rtc.AudioFrameEvent:
        if self._heard_tone and self._blanks >= self._tail:
            raise StopAsyncIteration
        event = await anext(self._stream)
        self.received.append(event.frame)
        if is_blank(event.frame.data.tobytes()):
            self._blanks += self._heard_tone
        else:
            self._heard_tone, self._blanks = True, 0
        return event

    async def aclose(self) -> None:
        await self._stream.aclose()


@pytest.mark.parametrize(
    ("rate", "channels", "freq_hz"),
    [(48_000, 1, 440.0), (8_000, 1, 300.0), (48_000, 2, 440.0)],
    ids=["48k-mono", "8k-mono", "48k-stereo"],
)
async def test_room_caller_turns_loopback_audio_into_internal_frames(
    rate: int, channels: int, freq_hz: float
) -> None:
    source = rtc.AudioSource(rate, 1, queue_size_ms=1000, loop=asyncio.get_running_loop())
    track = rtc.LocalAudioTrack.create_audio_track("caller", source)
    stream = rtc.AudioStream(track, sample_rate=rate, num_channels=channels)
    tap = Tap(stream)
    caller = RoomCaller(tap, RealClock())
    x = tone(freq_hz, 0.3, rate)
    tick = rate // 100
    for i in range(0, len(x), tick):
        await source.capture_frame(rtc.AudioFrame(x[i : i + tick].tobytes(), rate, 1, tick))

    async with asyncio.timeout(WAIT_S):
        out = [pcm async for pcm, _ in caller]
    await source.aclose()

    # Every frame the loopback delivered, as it delivered it (its own rate and channels).
    assert {(f.sample_rate, f.num_channels, f.samples_per_channel) for f in tap.received} == {
        (rate, channels, tick)
    }
    heard = np.concatenate([np.frombuffer(f.data.tobytes(), np.int16)[::channels] for f in tap.received])
    assert np.count_nonzero(heard) > 0
    internal_samples = len(heard) * SAMPLE_RATE // rate
    assert len(out) == -(-internal_samples // FRAME_SAMPLES)
    assert {len(pcm) for pcm in out} == {FRAME_SAMPLES * 2}

    # The same signal as resampling everything in one go, to soxr's dither: nothing lost, doubled
    # or clicked at the joins between frames (a filter restarted per frame would be far off there).
    y = np.frombuffer(b"".join(out), np.int16)
    reference = soxr.resample(heard, rate, SAMPLE_RATE, quality="HQ")
    assert len(y) - len(reference) < FRAME_SAMPLES
    assert np.max(np.abs(y[: len(reference)].astype(np.int32) - reference)) <= DITHER
    assert not y[len(reference) :].any()

    # Inside the tone (past the band-limited ringing of its onset and end), no step is larger than
    # the sine's own steepest one: a click at a frame join would be.
    edge = SAMPLE_RATE // 100
    start = int(np.flatnonzero(y)[0])
    tone_out = y[start + edge : start + int(0.3 * SAMPLE_RATE) - edge]
    assert abs(peak_hz(tone_out, SAMPLE_RATE) - freq_hz) < SAMPLE_RATE / len(tone_out)
    steepest = 2 * np.pi * freq_hz * AMPLITUDE / SAMPLE_RATE
    assert np.max(np.abs(np.diff(tone_out.astype(np.int32)))) <= 1.01 * steepest

    with pytest.raises(StopAsyncIteration):  # RoomCaller closed the AudioStream at the end
        await anext(stream)


class ManualClock:
    def __init__(self) -> None:
        self.t = 0.0

    def now(self) -> float:
        return self.t

    async def sleep_until(self, deadline: float) -> None:
        raise AssertionError("RoomCaller never waits on the clock")

    def busy(self) -> Any:
        raise AssertionError("RoomCaller does no thread work")


class ScriptedStream:
    """Room frames of the given sizes, each arriving at its time on the clock, alternately bare and
    wrapped in an AudioFrameEvent as AudioStream yields them."""

    def __init__(
        self, clock: ManualClock, rate: int, sizes: Sequence[int], arrivals: Sequence[float]
    ) -> None:
        self._items = iter(zip(sizes, arrivals, strict=True))
        self._clock = clock
        self._rate = rate
        self._count = 0
        self.closed = False

    def __aiter__(self) -> ScriptedStream:
        return self

    async def __anext__(self) -> rtc.AudioFrame | rtc.AudioFrameEvent:
        try:
            size, arrived_at = next(self._items)
        except StopIteration:
            raise StopAsyncIteration from None
        self._clock.t = arrived_at
        self._count += 1
        frame = rtc.AudioFrame(tone(440, size / self._rate, self._rate).tobytes(), self._rate, 1, size)
        return frame if self._count % 2 else rtc.AudioFrameEvent(frame)

    async def aclose(self) -> None:
        self.closed = True


@pytest.mark.parametrize(
    ("rate", "sizes"),
    [
        # 10 ms, a 60 ms frame that completes three internal frames at once, then 7 ms frames
        (48_000, [480, 480, 2880, *[336] * 40, 480]),
        (8_000, [160] * 30),  # telephone: 20 ms frames, and 120 ms held inside the resampler
    ],
    ids=["48k-uneven", "8k-20ms"],
)
async def test_room_caller_stamps_each_frame_with_the_arrival_of_its_last_sample(
    rate: int, sizes: list[int]
) -> None:
    clock = ManualClock()
    arrivals = list(100.0 + np.cumsum(np.random.default_rng(1).uniform(0.001, 0.05, len(sizes))))
    stream = ScriptedStream(clock, rate, sizes, arrivals)

    stamps = [arrived_at async for _, arrived_at in RoomCaller(stream, clock)]

    ends = np.cumsum(sizes)  # where each room frame ends, in samples at its rate
    per_frame = rate * FRAME_SAMPLES // SAMPLE_RATE  # room samples in one internal frame
    assert len(stamps) == -(-int(ends[-1]) // per_frame)
    expected = [arrivals[min(int(np.searchsorted(ends, (k + 1) * per_frame)), len(sizes) - 1)]
                for k in range(len(stamps))]  # fmt: skip
    assert stamps == expected
    assert stamps == sorted(stamps)
    if rate == 48_000:  # the 60 ms frame (arrived third) completed internal frames 1, 2 and 3
        assert stamps[1:4] == [arrivals[2]] * 3
    assert stream.closed


# -- RoomSink ----------------------------------------------------------------------------------


async def test_room_sink_is_a_buffered_sink() -> None:
    sink = RoomSink()
    try:
        assert isinstance(sink, BufferedSink)
        assert (sink.source.sample_rate, sink.source.num_channels) == (48_000, 1)
    finally:
        await sink.aclose()


async def test_room_sink_plays_what_it_is_sent_including_the_end_of_the_reply() -> None:
    sink = RoomSink()
    listener = Listener(sink.source)
    sent = list(frames(tone(437, 0.2, SAMPLE_RATE)))
    expected = played(sent)
    try:
        for pcm in sent:
            await sink.send(pcm, 0.0)
        # No flush(): the sink hands over what its resampler holds once the frames stop coming.
        await listener.until(lambda ticks: heard_tick(ticks, expected[-1]))
    finally:
        await listener.aclose()
        await sink.aclose()

    heard = nonblank(listener.ticks)
    assert all_same(heard, expected)
    audio = np.frombuffer(b"".join(heard), np.int16)
    assert abs(peak_hz(audio, 48_000) - 437) < 48_000 / len(audio)


@pytest.mark.parametrize("paused_first", [False, True], ids=["playing", "paused"])
async def test_room_sink_clear_drops_everything_sent_before(paused_first: bool) -> None:
    # A large queue, filled at once: without the clear, all 500 ms of the first reply would play.
    sink = RoomSink(queue_ms=1000)
    listener = Listener(sink.source)
    cancelled = list(frames(tone(437, 0.5, SAMPLE_RATE)))
    marker = list(frames(tone(1000, 0.1, SAMPLE_RATE)))
    cancelled_ticks, marker_ticks = played(cancelled, flush=False), played(marker)
    try:
        for pcm in cancelled:
            await sink.send(pcm, 0.0)
        await listener.until(lambda ticks: len(nonblank(ticks)) >= 1)  # it is playing
        if paused_first:  # a barge-in confirmed while the agent was paused for it
            sink.pause()
            sink.clear()
            sink.resume()
        else:
            sink.clear()
        for pcm in marker:
            await sink.send(pcm, 0.0)
        await sink.flush()
        await listener.until(lambda ticks: heard_tick(ticks, marker_ticks[-1]))
    finally:
        await listener.aclose()
        await sink.aclose()

    heard = nonblank(listener.ticks)
    cut = len(heard) - len(marker_ticks)
    assert all_same(heard[cut:], marker_ticks)  # after the clear point: the marker, all of it, only it
    assert all_same(heard[:cut], cancelled_ticks[:cut])
    assert 1 <= cut < len(cancelled_ticks)


async def test_room_sink_pause_silences_and_resume_plays_on_from_where_it_stopped() -> None:
    sink = RoomSink()  # 200 ms queue: the 260 ms given at first fill it, and pause() takes it back
    listener = Listener(sink.source)
    reply = list(frames(tone(437, 0.6, SAMPLE_RATE)))
    expected = played(reply)
    try:
        for pcm in reply[:15]:
            await sink.send(pcm, 0.0)
        await listener.until(lambda ticks: len(nonblank(ticks)) >= 3)
        sink.pause()
        paused_at = len(listener.ticks)
        # The caller hears silence (the source would otherwise play ~200 ms more).
        await listener.until(lambda ticks: len(ticks) >= paused_at + 3 and all(map(is_blank, ticks[-3:])))
        sink.resume()
        for pcm in reply[15:]:
            await sink.send(pcm, 0.0)
        await sink.flush()
        await listener.until(lambda ticks: heard_tick(ticks, expected[-1]))
    finally:
        await listener.aclose()
        await sink.aclose()

    heard = nonblank(listener.ticks)
    # The promise: the same audio, in order, but for one 10 ms tick repeated or skipped at the
    # joint (the source's timer cannot be seen from Python).
    found = joint(heard, expected)
    assert found is not None, f"heard {len(heard)} ticks, expected {len(expected)} with one joint"
    # and the pause was a real gap: silence between the two halves
    first = next(i for i, t in enumerate(listener.ticks) if not is_blank(t))
    last = max(i for i, t in enumerate(listener.ticks) if not is_blank(t))
    assert any(is_blank(t) for t in listener.ticks[first:last])


class HeldSource:
    """An AudioSource whose captures the test completes by hand: what the sink does while the SDK
    is still taking a frame, a window too short to hit on the real one."""

    sample_rate, num_channels = 48_000, 1

    def __init__(self) -> None:
        self.taken: list[bytes] = []
        self.clears = 0
        self.capturing = asyncio.Event()
        self.release = asyncio.Event()
        self.took = asyncio.Event()

    async def capture_frame(self, frame: rtc.AudioFrame) -> None:
        self.capturing.set()
        await self.release.wait()
        self.taken.append(frame.data.tobytes())
        self.took.set()

    def clear_queue(self) -> None:
        self.clears += 1

    async def aclose(self) -> None:
        pass


async def held_sink() -> tuple[RoomSink, HeldSource]:
    sink = RoomSink()
    await sink.source.aclose()
    source = HeldSource()
    sink.source = source  # type: ignore[assignment]
    return sink, source


async def test_room_sink_clears_again_a_frame_whose_capture_spanned_the_clear() -> None:
    sink, source = await held_sink()
    reply = b"".join(frames(tone(437, 0.1, SAMPLE_RATE)))  # three source frames at once
    sending = asyncio.create_task(sink.send(reply, 0.0))
    await source.capturing.wait()  # the SDK has the first frame: it may reach the buffer after a clear
    sink.clear()
    assert source.clears == 1
    source.release.set()
    await sending
    assert source.clears == 2  # again once the capture completed, so the frame is gone too
    assert len(source.taken) == 1  # and the rest of the cancelled reply was never given
    await sink.aclose()


async def test_room_sink_holds_what_is_sent_while_paused_until_resume() -> None:
    sink, source = await held_sink()
    source.release.set()
    sent = list(frames(tone(437, 0.2, SAMPLE_RATE)))
    sink.pause()
    for pcm in sent:
        await sink.send(pcm, 0.0)
    await sink.flush()
    assert source.taken == []
    sink.resume()
    expected = played(sent)
    async with asyncio.timeout(WAIT_S):
        while len(nonblank(as_ticks(b"".join(source.taken)))) < len(expected):
            source.took.clear()
            await source.took.wait()
    assert all_same(nonblank(as_ticks(b"".join(source.taken))), expected)
    await sink.aclose()
