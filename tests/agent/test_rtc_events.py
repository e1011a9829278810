"""The worker's routing of livekit rtc frame events (agent._rtc_events): every stream still gets
exactly its own audio, and a closed stream leaves nothing behind."""

from __future__ import annotations

import asyncio

import numpy as np
from livekit import rtc
from livekit.rtc._ffi_client import FfiClient

from agent._rtc_events import bind_stream

RATE = 48_000
TICK = RATE // 100


def tone(freq: float, ticks: int) -> list[rtc.AudioFrame]:
    t = np.arange(ticks * TICK) / RATE
    pcm = np.round(8000 * np.sin(2 * np.pi * freq * t)).astype(np.int16)
    return [rtc.AudioFrame(pcm[i * TICK : (i + 1) * TICK].tobytes(), RATE, 1, TICK) for i in range(ticks)]


def peak_hz(frames: list[bytes]) -> float:
    x = np.frombuffer(b"".join(frames), np.int16).astype(np.float64)
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.argmax(spectrum)) * RATE / len(x)


async def test_bound_streams_each_hear_their_own_source_and_unbind_when_closed() -> None:
    sources = [rtc.AudioSource(RATE, 1) for _ in range(3)]
    streams = [
        bind_stream(
            rtc.AudioStream(
                rtc.LocalAudioTrack.create_audio_track(f"t{i}", s), sample_rate=RATE, num_channels=1
            )
        )
        for i, s in enumerate(sources)
    ]
    heard: list[list[bytes]] = [[], [], []]

    async def listen(i: int) -> None:
        async for event in streams[i]:
            if np.abs(np.frombuffer(event.frame.data, np.int16)).max() > 100:
                heard[i].append(bytes(event.frame.data))
                if len(heard[i]) >= 30:
                    return

    async def play(i: int, freq: float) -> None:
        for frame in tone(freq, 60):
            await sources[i].capture_frame(frame)

    async with asyncio.timeout(30):
        await asyncio.gather(*(listen(i) for i in range(3)), play(0, 440.0), play(1, 1000.0), play(2, 2500.0))
    for i, freq in enumerate((440.0, 1000.0, 2500.0)):
        assert abs(peak_hz(heard[i]) - freq) < 20  # its own source's tone, nobody else's
    queue = FfiClient.instance.queue
    for stream in streams:
        await stream.aclose()
    for source in sources:
        await source.aclose()
    assert not queue._streams  # type: ignore[attr-defined]
