"""A LiveKit room's audio as a Call's transport: the caller's track in (`RoomCaller`), the agent's
track out (`RoomSink`).

Every livekit call here is an FFI round trip to the SDK's native threads, about 80 us of CPU on
this machine whatever the frame size, far more than reframing the audio. So the sink hands the
source 20 ms frames, not 10 ms ones, and a worker can subscribe to the caller's track at 16 kHz in
20 ms frames (`rtc.AudioStream(track, sample_rate=16000, frame_size_ms=20)`): the native side then
resamples and the reframer only cuts.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator

import structlog
from livekit import rtc

from pipeline import FRAME_S, Clock, InboundReframer, OutboundReframer

__all__ = ["RoomCaller", "RoomSink"]

log = structlog.get_logger("voicerun.room")

_TIMELINE_SLACK_S = 1e-6
"""Float error allowed when matching positions on the caller's audio timeline: far below the
5 us of one sample at 192 kHz, far above the rounding of a day of summed frame lengths."""

_IDLE_FLUSH_S = 0.1
"""No agent frame for this long means the reply has ended: its last ~40 ms, still inside the
resampler's filter, go to the source. The playout sends every 20 ms, so a shorter wait would cut
a reply whose frames came late, restarting the filter mid-word."""


class RoomCaller:
    """The caller's track -> the Call's caller audio: internal frames, each with the clock time at
    which the room frame holding its last sample arrived.

    `stream` is an `rtc.AudioStream` (or anything yielding its events or bare `rtc.AudioFrame`s) at
    any rate and channel count. The time is read the moment a room frame is handed over: the Call
    asks for the next frame as soon as it has handled one, so that is when the stream queued it, to
    within a loop turn. The resampler holds audio back (up to 50 ms at 48 kHz, 120 ms at 8 kHz;
    module table in pipeline/_reframe.py), and the stamps leave that wait in the turn latencies,
    because the caller lives through it.

    Ends when the stream does (the caller's track is gone), after the audio the resampler still
    holds, and closes the stream. A Call that stops reading first must `aclose()` it.
    """

    def __init__(
        self,
        stream: AsyncIterator[rtc.AudioFrameEvent | rtc.AudioFrame],
        clock: Clock,
        *,
        low_latency: bool = False,
    ) -> None:
        self._stream = stream
        self._clock = clock
        self._reframer = InboundReframer(low_latency=low_latency)
        self._arrivals: deque[tuple[float, float]] = deque()
        """(where a room frame ends on the caller's audio timeline, when it arrived), for the room
        frames whose audio has not all left as internal frames yet: a few, whatever the call's length."""
        self._received_s = 0.0
        self._frames_out = 0
        self._ready: deque[tuple[bytes, float]] = deque()
        self._ended = False

    def __aiter__(self) -> RoomCaller:
        return self

    async def __anext__(self) -> tuple[bytes, float]:
        while not self._ready:
            if self._ended:
                raise StopAsyncIteration
            try:
                item = await anext(self._stream)
            except StopAsyncIteration:
                self._ended = True
                self._ready.extend((pcm, self._arrival()) for pcm in self._reframer.flush())
                await self.aclose()
                continue
            arrived_at = self._clock.now()
            frame = item.frame if isinstance(item, rtc.AudioFrameEvent) else item
            self._received_s += frame.samples_per_channel / frame.sample_rate
            self._arrivals.append((self._received_s, arrived_at))
            for pcm in self._reframer.push(frame.data.tobytes(), frame.sample_rate, frame.num_channels):
                self._ready.append((pcm, self._arrival()))
        return self._ready.popleft()

    async def aclose(self) -> None:
        """Close the stream (idempotent). An `rtc.AudioStream` then ends, which ends this iterator."""
        close = getattr(self._stream, "aclose", None)
        if close is not None:
            await close()

    def _arrival(self) -> float:
        # The next internal frame ends _frames_out * 20 ms into the caller's audio (soxr's output
        # keeps the input's timeline): it arrived with the first room frame that reaches that far.
        # Past the end of the audio (the padding of the last frame), the last room frame counts.
        self._frames_out += 1
        end_s = self._frames_out * FRAME_S - _TIMELINE_SLACK_S
        while len(self._arrivals) > 1 and self._arrivals[0][0] < end_s:
            self._arrivals.popleft()
        return self._arrivals[0][1]


class RoomSink:
    """The agent's internal frames -> `source`, an `rtc.AudioSource` to publish as the agent's track.

    A `pipeline.BufferedSink`. The source plays 10 ms at a time on its own native timer and holds
    what it was given until then (up to 2 x `queue_ms`; with the playout's pacing it holds little).

    * `send()` returns once the source has taken the frame's audio (at once while paused).
    * `pause()` empties the source: the caller hears nothing more. The source cannot hand audio back,
      so the sink keeps what it gave the source lately, and takes back as much of its end as the
      source had not played yet, counted on the wall clock, in whole 10 ms ticks.
    * `resume()` gives that back to the source first, then what was sent during the pause. The joint
      is right to within one 10 ms tick, repeated or skipped: the source plays a tick at a time on
      a timer of its own that Python cannot see. (A starved timer thread plays late, and then
      more is skipped.)
    * `clear()` drops everything: what the source holds, what the resampler holds, what pause()
      kept. Nothing sent before it is heard or resent.

    A frame whose capture is in flight when pause() or clear() runs reaches the source's buffer on
    an SDK thread, possibly after their clear; the sink clears again once the capture completes,
    and the frame is heard only if the source's timer took it in between.
    Must be made inside the event loop that will drive it; `aclose()` at the end of the call.
    """

    def __init__(
        self,
        *,
        sample_rate: int = 48_000,
        num_channels: int = 1,
        queue_ms: int = 200,
        frame_ms: int = 20,
        low_latency: bool = False,
    ) -> None:
        if sample_rate % 100 or queue_ms <= 0 or queue_ms % 10 or frame_ms <= 0 or frame_ms % 10:
            raise ValueError(
                f"room audio: the source plays 10 ms ticks, so {sample_rate} Hz, queue_ms={queue_ms} "
                f"and frame_ms={frame_ms} must be whole ticks"
            )
        self._loop = asyncio.get_running_loop()
        self.source = rtc.AudioSource(sample_rate, num_channels, queue_size_ms=queue_ms, loop=self._loop)
        self._reframer = OutboundReframer(sample_rate, frame_ms, num_channels, low_latency=low_latency)
        self._tick_bytes = sample_rate // 100 * num_channels * 2
        self._outbox: deque[bytes] = deque()
        """Frames for the source, in order: what pause() took back, then what came after."""
        self._given: deque[bytes] = deque(maxlen=2 * queue_ms // frame_ms + 2)
        """The frames the source got last: more than it can hold, so pause() can take any back."""
        self._lock = asyncio.Lock()
        self._paused = False
        self._clears = 0
        """Counts pause() and clear(): a capture that spans one must be cleared again."""
        self._plays_until = 0.0
        """Loop time at which the source will have played all it was given. Kept here rather than
        read from `queued_duration`, which goes wrong after the source runs dry unless a timer
        callback of the SDK's has run first, late on a busy loop."""
        self._last_send = 0.0
        self._idle: asyncio.TimerHandle | None = None
        self._drainer: asyncio.Task[None] | None = None

    async def send(self, pcm: bytes, t: float) -> None:
        self._outbox.extend(self._reframer.push(pcm))
        self._last_send = self._loop.time()
        self._watch_idle()
        await self._drain()

    def pause(self) -> None:
        if self._paused:
            return
        self._paused = True
        self._clears += 1
        # round(), not a floor or a ceiling: the source's tick falls anywhere in the last 10 ms, so
        # the estimate is off by up to a tick either way (measured on the loopback).
        unplayed_ticks = round(max(0.0, self._plays_until - self._loop.time()) * 100)
        self.source.clear_queue()
        self._plays_until = 0.0
        self._outbox.extendleft(reversed(self._take_back(unplayed_ticks * self._tick_bytes)))

    def resume(self) -> None:
        if not self._paused:
            return
        self._paused = False
        self._drain_soon()
        self._watch_idle()

    def clear(self) -> None:
        self._clears += 1
        self._outbox.clear()
        self._given.clear()
        self._reframer.clear()
        self.source.clear_queue()
        self._plays_until = 0.0

    async def flush(self) -> None:
        """Hand the source the audio the resampler still holds now (the end of the call), rather
        than after the idle wait that ends each reply."""
        self._outbox.extend(self._reframer.flush())
        await self._drain()

    async def aclose(self) -> None:
        """Stop at once: nothing more is given to the source, which is then closed."""
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        if self._drainer is not None:
            self._drainer.cancel()
            await asyncio.wait({self._drainer})
        await self.source.aclose()

    async def _drain(self) -> None:
        async with self._lock:
            while self._outbox and not self._paused:
                data = self._outbox.popleft()
                self._given.append(data)  # before the await: pause() may need it back meanwhile
                clears = self._clears
                samples = len(data) // (2 * self.source.num_channels)
                self._plays_until = (
                    max(self._plays_until, self._loop.time()) + samples / self.source.sample_rate
                )
                await self.source.capture_frame(
                    rtc.AudioFrame(data, self.source.sample_rate, self.source.num_channels, samples)
                )
                if self._clears != clears:
                    self.source.clear_queue()

    def _take_back(self, unplayed_bytes: int) -> list[bytes]:
        back: list[bytes] = []
        while unplayed_bytes > 0 and self._given:
            data = self._given.pop()
            if len(data) > unplayed_bytes:  # the source had begun this frame: keep its unplayed ticks
                data = data[-unplayed_bytes:]
            back.append(data)
            unplayed_bytes -= len(data)
        self._given.clear()
        back.reverse()
        return back

    def _watch_idle(self) -> None:
        if self._idle is None:
            self._idle = self._loop.call_later(_IDLE_FLUSH_S, self._on_idle)

    def _on_idle(self) -> None:
        self._idle = None
        if self._paused:
            return  # resume() watches again
        wait_s = self._last_send + _IDLE_FLUSH_S - self._loop.time()
        if wait_s > 0 or self._lock.locked():
            self._idle = self._loop.call_later(max(wait_s, _IDLE_FLUSH_S / 2), self._on_idle)
            return
        self._outbox.extend(self._reframer.flush())
        self._drain_soon()

    def _drain_soon(self) -> None:
        # For callers that cannot await (resume, the idle timer). One task at a time, owned here
        # (aclose() stops it); one still running takes whatever was queued since, in order.
        if self._outbox and (self._drainer is None or self._drainer.done()):
            self._drainer = self._loop.create_task(self._drain_logged(), name="room-sink-drain")

    async def _drain_logged(self) -> None:
        try:
            await self._drain()
        except Exception:
            log.exception("room_sink_capture_failed")
