"""Agent audio out: paced 20 ms frames, with pause, resume and cancel that act before the next frame.

Each reply writes through its own Playback. Every queued chunk and marker belongs to one, so
cancelling a reply removes exactly its audio and refuses whatever it writes afterwards: a writer
that was waiting for room, a TTS request still in flight and a marker queued behind a pause all
end the same way, with nothing of the cancelled reply played.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from ._audio import FRAME_BYTES, FRAME_S
from ._clock import Clock


class AudioSink(Protocol):
    async def send(self, pcm: bytes, t: float) -> None:
        """Play one internal-format frame that starts at clock time t."""
        ...


@runtime_checkable
class BufferedSink(AudioSink, Protocol):
    """A sink that keeps a queue of its own (a room's audio source holds frames it was sent
    until their time comes): the playout stops that queue too, or the caller would go on hearing
    what was already handed over after a barge-in."""

    def pause(self) -> None:
        """Stop playing now, keeping what is queued (the agent may resume where it stopped)."""
        ...

    def resume(self) -> None:
        """Play on from where pause() stopped."""
        ...

    def clear(self) -> None:
        """Drop everything queued: none of it will be heard."""
        ...


class SegmentStats:
    """Bytes of one TTS segment written to and played from the buffer."""

    __slots__ = ("played", "written")

    def __init__(self) -> None:
        self.written = 0
        self.played = 0


class Playback:
    """One reply's audio in the playout, from open() until it has played or is cancelled."""

    __slots__ = ("_playout", "cancelled")

    def __init__(self, playout: Playout) -> None:
        self._playout = playout
        self.cancelled = False

    async def write(
        self, pcm: bytes, stats: SegmentStats, on_start: Callable[[float], None] | None = None
    ) -> None:
        """Queue pcm behind what is already queued; waits while the buffer is full. After cancel()
        (also while waiting for room) the audio is refused: nothing is queued or counted."""
        await self._playout._write(self, pcm, stats, on_start)

    async def drained(self) -> float:
        """Wait until everything this playback wrote has played; returns when its last frame ended.
        Never returns once the playback is cancelled."""
        return await self._playout._drained(self)

    def cancel(self) -> None:
        """Drop this playback's queued audio and markers before the next frame; refuse later writes."""
        self._playout._cancel(self)


@dataclass(slots=True)
class _Chunk:
    owner: Playback | None
    data: bytes
    stats: SegmentStats
    on_start: Callable[[float], None] | None
    offset: int = 0


@dataclass(slots=True)
class _Marker:
    owner: Playback | None
    fire: Callable[[float], None]


class Playout:
    """One per call. write() pushes back when more than max_buffer_s is queued."""

    def __init__(self, clock: Clock, sink: AudioSink, max_buffer_s: float = 10.0) -> None:
        self._clock = clock
        self._sink = sink
        self._buffered = sink if isinstance(sink, BufferedSink) else None
        self._sending: Playback | None = None
        """Whose frames the sink got last (a buffered sink may still be playing them)."""
        self._max_bytes = int(max_buffer_s / FRAME_S) * FRAME_BYTES
        self._items: deque[_Chunk | _Marker] = deque()
        self._bytes = 0
        self._paused = False
        self._next_slot = 0.0
        self._last_end = 0.0
        self._wakeup = asyncio.Event()
        self._space = asyncio.Event()
        self.frames_sent = 0

    @property
    def audible(self) -> bool:
        """Agent audio is reaching the caller now (or its last frame is still playing)."""
        if self._paused:
            return False
        return self._bytes > 0 or self._clock.now() < self._last_end

    @property
    def buffered_s(self) -> float:
        return self._bytes / FRAME_BYTES * FRAME_S

    def open(self) -> Playback:
        """A new playback (one per reply); its audio queues behind everything already written."""
        return Playback(self)

    async def _write(
        self,
        owner: Playback,
        pcm: bytes,
        stats: SegmentStats,
        on_start: Callable[[float], None] | None,
    ) -> None:
        while self._bytes >= self._max_bytes and not owner.cancelled:
            self._space.clear()
            await self._space.wait()
        # Checked after the wait: cancel() wakes the waiters so that they see it here.
        if owner.cancelled:
            return
        stats.written += len(pcm)
        self._items.append(_Chunk(owner, pcm, stats, on_start))
        self._bytes += len(pcm)
        self._wakeup.set()

    def _cancel(self, owner: Playback) -> None:
        if owner.cancelled:
            return
        owner.cancelled = True
        kept: deque[_Chunk | _Marker] = deque()
        for item in self._items:
            if item.owner is owner:
                if isinstance(item, _Chunk):
                    self._bytes -= len(item.data) - item.offset
            else:
                kept.append(item)
        self._items = kept
        self._space.set()
        if self._buffered is not None and self._sending is owner:
            self._buffered.clear()  # what the sink holds is this reply's: none of it is heard
            self._sending = None

    def _mark(self, owner: Playback | None, fire: Callable[[float], None]) -> None:
        if not self._items:
            fire(max(self._last_end, self._clock.now()))
        else:
            self._items.append(_Marker(owner, fire))

    async def _drained(self, owner: Playback | None) -> float:
        done: asyncio.Future[float] = asyncio.get_running_loop().create_future()

        def fire(t: float) -> None:
            if not done.done():
                done.set_result(t)

        self._mark(owner, fire)
        return await done

    async def drained(self) -> float:
        """Wait until everything written so far has played; returns when the last frame ended."""
        return await self._drained(None)

    def pause(self) -> None:
        if not self._paused:
            self._paused = True
            if self._buffered is not None:
                self._buffered.pause()

    def resume(self) -> None:
        if self._paused:
            self._paused = False
            if self._buffered is not None:
                self._buffered.resume()
        self._wakeup.set()

    async def run(self) -> None:
        while True:
            while self._paused or self._bytes == 0:
                self._wakeup.clear()
                await self._wakeup.wait()
            slot = max(self._next_slot, self._clock.now())
            await self._clock.sleep_until(slot)
            if self._paused or self._bytes == 0:
                continue
            frame = self._take_frame(slot)
            self._next_slot = slot + FRAME_S
            self._last_end = self._next_slot
            self.frames_sent += 1
            await self._sink.send(frame, slot)
            self._fire_markers()
            self._space.set()

    def _take_frame(self, t: float) -> bytes:
        parts: list[bytes] = []
        need = FRAME_BYTES
        while need and self._items:
            item = self._items[0]
            if isinstance(item, _Marker):
                if parts:
                    break  # a marker ends a run: pad rather than mix its audio with what follows
                self._items.popleft()
                item.fire(t)
                continue
            if item.offset == 0 and item.on_start is not None:
                item.on_start(t)
            self._sending = item.owner
            take = item.data[item.offset : item.offset + need]
            item.offset += len(take)
            item.stats.played += len(take)
            parts.append(take)
            need -= len(take)
            if item.offset >= len(item.data):
                self._items.popleft()
        frame = b"".join(parts)
        self._bytes -= len(frame)
        return frame + bytes(FRAME_BYTES - len(frame)) if len(frame) < FRAME_BYTES else frame

    def _fire_markers(self) -> None:
        while self._items and isinstance(self._items[0], _Marker):
            marker = self._items.popleft()
            assert isinstance(marker, _Marker)
            marker.fire(self._last_end)
