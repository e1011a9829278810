"""Agent audio out: paced 20 ms frames, with pause, resume and flush that act before the next frame."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from ._audio import FRAME_BYTES, FRAME_S
from ._clock import Clock


class AudioSink(Protocol):
    async def send(self, pcm: bytes, t: float) -> None:
        """Play one internal-format frame that starts at clock time t."""
        ...


class SegmentStats:
    """Bytes of one TTS segment written to and played from the buffer."""

    __slots__ = ("played", "written")

    def __init__(self) -> None:
        self.written = 0
        self.played = 0


@dataclass(slots=True)
class _Chunk:
    data: bytes
    stats: SegmentStats
    on_start: Callable[[float], None] | None
    offset: int = 0


@dataclass(slots=True)
class _Marker:
    fire: Callable[[float], None]


class Playout:
    """One per call. write() pushes back when more than max_buffer_s is queued."""

    def __init__(self, clock: Clock, sink: AudioSink, max_buffer_s: float = 10.0) -> None:
        self._clock = clock
        self._sink = sink
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

    async def write(
        self, pcm: bytes, stats: SegmentStats, on_start: Callable[[float], None] | None = None
    ) -> None:
        while self._bytes >= self._max_bytes:
            self._space.clear()
            await self._space.wait()
        stats.written += len(pcm)
        self._items.append(_Chunk(pcm, stats, on_start))
        self._bytes += len(pcm)
        self._wakeup.set()

    def mark(self, fire: Callable[[float], None]) -> None:
        """Call fire(t) when everything written so far has finished playing."""
        if not self._items:
            fire(max(self._last_end, self._clock.now()))
        else:
            self._items.append(_Marker(fire))

    async def drained(self) -> float:
        """Wait until everything written so far has played; returns when the last frame ended."""
        done: asyncio.Future[float] = asyncio.get_running_loop().create_future()

        def fire(t: float) -> None:
            if not done.done():
                done.set_result(t)

        self.mark(fire)
        return await done

    def pause(self) -> None:
        self._paused = True

    def resume(self) -> None:
        self._paused = False
        self._wakeup.set()

    def flush(self) -> None:
        """Drop everything queued (the reply was interrupted); pending markers never fire."""
        self._items.clear()
        self._bytes = 0
        self._paused = False
        self._space.set()

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
