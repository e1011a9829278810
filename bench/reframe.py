"""Cost per 20 ms of audio of the streaming reframer, and the most audio it holds back (soxr's
filter and the partial frame), with each soxr engine.

    .venv/bin/python bench/reframe.py
"""

from __future__ import annotations

import time

import numpy as np

from pipeline import FRAME_S, InboundReframer, OutboundReframer

SECONDS = 20


def _tone(rate: int, samples: int, channels: int) -> bytes:
    t = np.arange(samples) / rate
    x = np.round(0.5 * 32767 * np.sin(2 * np.pi * 440 * t)).astype(np.int16)
    return np.repeat(x, channels).tobytes()


def inbound(rate: int, frame_ms: int, channels: int, low_latency: bool) -> None:
    n = rate * frame_ms // 1000
    pcm, r = _tone(rate, n, channels), InboundReframer(low_latency=low_latency)
    pushes = SECONDS * 1000 // frame_ms
    out = held = 0
    start = time.perf_counter()
    for i in range(1, pushes + 1):
        out += sum(1 for _ in r.push(pcm, rate, channels))
        held = max(held, round(i * frame_ms - out * FRAME_S * 1000))
    us = (time.perf_counter() - start) / (SECONDS / FRAME_S) * 1e6
    print(
        f"in  {rate:>6} Hz {frame_ms:>2} ms x{channels}{_engine(low_latency)}: {us:5.1f} us per 20 ms, "
        f"at most {held} ms held"
    )


def outbound(rate: int, frame_ms: int, low_latency: bool) -> None:
    frame, r = _tone(16_000, 320, 1), OutboundReframer(rate, frame_ms, low_latency=low_latency)
    pushes = int(SECONDS / FRAME_S)
    out = held = 0
    start = time.perf_counter()
    for i in range(1, pushes + 1):
        out += sum(1 for _ in r.push(frame))
        held = max(held, round(i * FRAME_S * 1000 - out * frame_ms))
    us = (time.perf_counter() - start) / pushes * 1e6
    print(
        f"out {rate:>6} Hz {frame_ms:>2} ms x1{_engine(low_latency)}: {us:5.1f} us per 20 ms, "
        f"at most {held} ms held"
    )


def _engine(low_latency: bool) -> str:
    return " low-latency" if low_latency else " block      "


if __name__ == "__main__":
    for low_latency in (True, False):
        inbound(48_000, 10, 1, low_latency)
        inbound(48_000, 10, 2, low_latency)
        inbound(44_100, 10, 1, low_latency)
        inbound(8_000, 20, 1, low_latency)
        inbound(16_000, 20, 1, low_latency)
        outbound(48_000, 10, low_latency)
        outbound(8_000, 20, low_latency)
