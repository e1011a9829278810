"""A call from a recording: the WAV plays as the caller, agent audio lands on the same timeline."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import numpy as np

from pipeline import FRAME_S, FRAME_SAMPLES, SAMPLE_RATE, Clock, Int16Array, RealClock, VirtualClock, frames
from workflows import Workflow

from ._call import Call, CallRecord
from ._providers import ProviderPool


class RecordingCall:
    """Feeds caller frames when they would have been fully received, records agent frames as sent."""

    def __init__(self, caller: Int16Array, clock: Clock) -> None:
        self._caller = caller
        self._clock = clock
        self._t0 = 0.0
        self._agent: list[tuple[float, bytes]] = []
        self._fed_samples = 0

    async def caller_frames(self) -> AsyncIterator[tuple[bytes, float]]:
        """Each frame stamped with when it finished arriving: a late wake-up on a loaded loop
        is counted in the turn's latency, as the caller would hear it."""
        self._t0 = self._clock.now()
        for k, frame in enumerate(frames(self._caller)):
            arrived = self._t0 + (k + 1) * FRAME_S
            await self._clock.sleep_until(arrived)
            self._fed_samples = min(len(self._caller), (k + 1) * FRAME_SAMPLES)
            yield frame, arrived

    async def send(self, pcm: bytes, t: float) -> None:
        self._agent.append((t, pcm))

    def agent_onsets_s(self) -> list[float]:
        return [t - self._t0 for t, _ in self._agent]

    def mix(self) -> tuple[Int16Array, Int16Array]:
        """(caller, agent) channels on one timeline: the caller audio the call heard (all of it,
        unless the call ended early) and every agent frame sent."""
        placed = [(round((t - self._t0) * SAMPLE_RATE), np.frombuffer(pcm, "<i2")) for t, pcm in self._agent]
        heard = self._caller[: self._fed_samples]
        end = max([len(heard), *[start + len(x) for start, x in placed]])
        agent = np.zeros(end, np.int16)
        for start, x in placed:
            agent[start : start + len(x)] = x
        caller = np.zeros(end, np.int16)
        caller[: len(heard)] = heard
        return caller, agent


@asynccontextmanager
async def recording_call(
    workflow: Workflow,
    caller: Int16Array,
    *,
    fast: bool,
    providers: ProviderPool | None = None,
    **call: Any,
) -> AsyncIterator[tuple[Call, RecordingCall]]:
    """A call whose caller is a recording: yields the prepared Call (not yet run) and the
    recording, whose mix() is the call audio once the call has run.

    fast: a VirtualClock (idle time skipped, compute charged); else the real clock. Providers
    passed in are reused and left open; otherwise a pool is made for this call and closed.
    `call`: the Call's other options (user_data, call_id, meter...).
    """
    own_pool = providers is None
    pool = providers if providers is not None else ProviderPool()
    clock: RealClock | VirtualClock
    if fast:
        clock = VirtualClock()
        clock.start()
    else:
        clock = RealClock()
    try:
        recording = RecordingCall(caller, clock)
        handle = Call(
            workflow=workflow, providers=pool, caller=recording.caller_frames(), sink=recording,
            clock=clock, **call,
        )  # fmt: skip
        yield handle, recording
    finally:
        if isinstance(clock, VirtualClock):
            await clock.aclose()
        if own_pool:
            await pool.aclose()


async def call_from_recording(
    workflow: Workflow,
    caller: Int16Array,
    *,
    fast: bool,
    providers: ProviderPool | None = None,
    **call: Any,
) -> tuple[CallRecord, tuple[Int16Array, Int16Array]]:
    """Play a recording as the caller of one call; returns the record and (caller, agent) audio."""
    async with recording_call(workflow, caller, fast=fast, providers=providers, **call) as (
        handle,
        recording,
    ):
        # Its own task, so the call's log context stays with the call.
        record = await asyncio.create_task(handle.run())
        return record, recording.mix()
