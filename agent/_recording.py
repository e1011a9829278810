"""A call from a recording: the WAV plays as the caller, agent audio lands on the same timeline."""

from __future__ import annotations

from collections.abc import AsyncIterator

import numpy as np

from pipeline import FRAME_S, SAMPLE_RATE, Clock, Int16Array, frames


class RecordingCall:
    """Feeds caller frames when they would have been fully received, records agent frames as sent."""

    def __init__(self, caller: Int16Array, clock: Clock) -> None:
        self._caller = caller
        self._clock = clock
        self._t0 = 0.0
        self._agent: list[tuple[float, bytes]] = []

    async def caller_frames(self) -> AsyncIterator[bytes]:
        self._t0 = self._clock.now()
        for k, frame in enumerate(frames(self._caller)):
            await self._clock.sleep_until(self._t0 + (k + 1) * FRAME_S)
            yield frame

    async def send(self, pcm: bytes, t: float) -> None:
        self._agent.append((t, pcm))

    def agent_onsets_s(self) -> list[float]:
        return [t - self._t0 for t, _ in self._agent]

    def mix(self) -> tuple[Int16Array, Int16Array]:
        """(caller, agent) channels on one timeline, as long as the longer of the two."""
        placed = [(round((t - self._t0) * SAMPLE_RATE), np.frombuffer(pcm, "<i2")) for t, pcm in self._agent]
        end = max([len(self._caller), *[start + len(x) for start, x in placed]])
        agent = np.zeros(end, np.int16)
        for start, x in placed:
            agent[start : start + len(x)] = x
        caller = np.zeros(end, np.int16)
        caller[: len(self._caller)] = self._caller
        return caller, agent
