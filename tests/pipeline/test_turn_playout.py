"""Playout: each reply's audio belongs to its Playback; cancelling one removes exactly its audio,
before the next frame, and refuses whatever it writes afterwards."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from pipeline import FRAME_BYTES, Playout, VirtualClock
from pipeline._playout import SegmentStats


class Sink:
    def __init__(self) -> None:
        self.frames: list[bytes] = []
        self.sent = asyncio.Event()

    async def send(self, pcm: bytes, t: float) -> None:
        self.frames.append(pcm)
        self.sent.set()


@pytest.fixture
async def clock() -> AsyncIterator[VirtualClock]:
    clock = VirtualClock()
    clock.start()
    yield clock
    await clock.aclose()


def audio(byte: int, frames: int) -> bytes:
    return bytes([byte]) * (FRAME_BYTES * frames)


async def test_a_writer_waiting_for_room_is_refused_once_its_playback_is_cancelled(
    clock: VirtualClock,
) -> None:
    sink = Sink()
    playout = Playout(clock, sink, max_buffer_s=0.04)  # room for 2 frames
    old, new = playout.open(), playout.open()
    stats = SegmentStats()
    await old.write(audio(1, 2), stats)
    blocked = asyncio.create_task(old.write(audio(1, 50), stats))  # waits for room
    await asyncio.sleep(0)  # not a timed wait: one loop turn runs the task up to its wait
    assert not blocked.done()
    old.cancel()
    await blocked  # woken by the cancel, and refused
    assert stats.written == 2 * FRAME_BYTES and playout.buffered_s == 0
    await new.write(audio(2, 3), SegmentStats())
    runner = asyncio.create_task(playout.run())
    assert await new.drained() > 0
    runner.cancel()
    assert sink.frames == [audio(2, 1)] * 3  # not one frame of the cancelled playback


async def test_cancel_drops_only_its_own_audio_and_markers(clock: VirtualClock) -> None:
    sink = Sink()
    playout = Playout(clock, sink)
    first, second = playout.open(), playout.open()
    first_stats, second_stats = SegmentStats(), SegmentStats()
    await first.write(audio(1, 2), first_stats)
    await second.write(audio(2, 2), second_stats)
    runner = asyncio.create_task(playout.run())
    await sink.sent.wait()  # the first frame of `first` is out
    fired: list[float] = []
    drained = asyncio.create_task(first.drained())
    drained.add_done_callback(lambda _: fired.append(1.0))
    await asyncio.sleep(0)  # one loop turn: the marker is queued
    first.cancel()
    await first.write(audio(1, 5), first_stats)  # in flight when cancelled: refused
    await second.drained()
    runner.cancel()
    assert sink.frames == [audio(1, 1), audio(2, 1), audio(2, 1)]
    assert (first_stats.played, first_stats.written) == (FRAME_BYTES, 2 * FRAME_BYTES)
    assert second_stats.played == second_stats.written == 2 * FRAME_BYTES
    assert not fired  # a cancelled playback's marker never fires
    drained.cancel()
