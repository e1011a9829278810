"""A call's recording: both sides captured on one timeline, encoded as stereo (caller left, agent
right), saved to a RecordingStore.

    recorder = CallRecorder(clock)  # before the call runs: its creation is time zero
    call = Call(..., caller=recorder.record_caller(room_caller), sink=recorder.record_sink(room_sink))
    ...run the call...
    location = await save_recording(recorder, store, call.id)

The recording is the agent's point of view: caller audio where it arrived, agent audio where it
was sent to play, so a barge-in shows the overlap the agent saw.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import re
from collections.abc import AsyncIterator
from typing import Any, Literal, overload

import numpy as np
import soundfile as sf

from pipeline import SAMPLE_RATE, AudioSink, BufferedSink, Clock, Int16Array

from ._recording_store import RecordingStore

__all__ = [
    "CONTENT_TYPES",
    "CallRecorder",
    "RecordingFormat",
    "encode_recording",
    "recording_key",
    "save_recording",
]

RecordingFormat = Literal["flac", "ogg"]
"""flac: lossless, 0.4 to 1.8 MB per minute of call (silence between words digital, or a -60 dBFS
noise floor) at 0.02 CPU s a minute. ogg: Opus at libsndfile's default (~57 kbps on noise), 0.15 to
0.42 MB a minute, at 0.5 to 0.9 CPU s a minute: up to 13 times the pipeline's own overhead per
call-second (README), which is why flac is the default."""

CONTENT_TYPES: dict[RecordingFormat, str] = {"flac": "audio/flac", "ogg": "audio/ogg"}
_SOUNDFILE_CODECS: dict[str, tuple[str, str]] = {"flac": ("FLAC", "PCM_16"), "ogg": ("OGG", "OPUS")}
_OPUS_RATES_HZ = (8_000, 12_000, 16_000, 24_000, 48_000)
"""The rates Opus encodes; libsndfile refuses any other with an empty error message."""
_BLOCK_SAMPLES = 1 << 16
"""Samples per channel interleaved and written at a time: the stereo copy stays at 256 KB."""


class CallRecorder:
    """Both sides of one call on one timeline, whose zero is `started_at` (by default, the clock
    time the recorder is made: make it before the call runs, so that nothing comes earlier).

    Caller audio is continuous: the first frame starts where its audio began (its arrival stamp
    less its duration) and every later frame follows the one before it, because arrival stamps
    jitter with the loop and the transport while the audio itself has no gaps. Agent frames land at
    the clock time t they were sent to play.

    What the caller never heard is left out: a BufferedSink's clear() drops the agent audio from
    the moment it stopped playing (the pause() before it, else the clear itself). A pause() that
    ends in resume() leaves the audio where it was sent, though the sink plays the part it held
    back after the pause: at most one frame, late by the pause.

    Holds the frames as they came, one copy of the call's audio; channels() makes the second.
    """

    def __init__(self, clock: Clock, *, started_at: float | None = None) -> None:
        self._clock = clock
        self.started_at = clock.now() if started_at is None else started_at
        self._caller: list[bytes] = []
        self._caller_start: int | None = None
        """Where the first caller frame starts on the timeline, in samples."""
        self._agent: list[tuple[float, bytes]] = []
        self._paused_at: float | None = None

    def record_caller(self, frames: AsyncIterator[tuple[bytes, float]]) -> AsyncIterator[tuple[bytes, float]]:
        """The caller's frames, passed through unchanged, each kept in order."""
        return _RecordedCaller(frames, self)

    @overload
    def record_sink(self, sink: BufferedSink) -> BufferedSink: ...
    @overload
    def record_sink(self, sink: AudioSink) -> AudioSink: ...
    def record_sink(self, sink: AudioSink) -> AudioSink:
        """`sink`, keeping every frame sent to it; a BufferedSink stays one (and a plain sink stays
        plain: the playout treats the two differently). Other attributes are the sink's own."""
        if isinstance(sink, BufferedSink):
            return _RecordedBufferedSink(sink, self)
        return _RecordedSink(sink, self)

    def channels(self) -> tuple[Int16Array, Int16Array]:
        """(caller, agent), of equal length: from the timeline's zero to the last sample of either.
        Call it once the call has ended; for a long call, in a thread (it copies every frame)."""
        caller_start = self._caller_start or 0
        caller_end = caller_start + sum(len(pcm) for pcm in self._caller) // 2
        agent_end = max((self._sample(t) + len(pcm) // 2 for t, pcm in self._agent), default=0)
        n = max(caller_end, agent_end, 0)
        caller, agent = np.zeros(n, np.int16), np.zeros(n, np.int16)
        at = caller_start
        for pcm in self._caller:
            _place(caller, at, pcm)
            at += len(pcm) // 2
        for t, pcm in self._agent:
            _place(agent, self._sample(t), pcm)
        return caller, agent

    def _sample(self, t: float) -> int:
        return round((t - self.started_at) * SAMPLE_RATE)

    def _on_caller(self, pcm: bytes, arrived_at: float) -> None:
        if self._caller_start is None:
            self._caller_start = self._sample(arrived_at) - len(pcm) // 2
        self._caller.append(bytes(pcm))  # a transport may hand over a buffer it reuses

    def _on_agent(self, pcm: bytes, t: float) -> None:
        self._agent.append((t, bytes(pcm)))

    def _on_pause(self) -> None:
        if self._paused_at is None:
            self._paused_at = self._clock.now()

    def _on_resume(self) -> None:
        self._paused_at = None

    def _on_clear(self) -> None:
        stopped = self._paused_at if self._paused_at is not None else self._clock.now()
        # The playout sends in time order, so what was not heard is a tail of the list: the frames
        # due after the stop, and the rest of the one playing at it.
        while self._agent and self._agent[-1][0] >= stopped:
            self._agent.pop()
        if self._agent:
            t, pcm = self._agent[-1]
            heard_bytes = 2 * round((stopped - t) * SAMPLE_RATE)
            if heard_bytes < len(pcm):
                self._agent[-1] = (t, pcm[:heard_bytes])


def _place(out: Int16Array, at: int, pcm: bytes) -> None:
    """Copy pcm into out from sample `at` on, dropping what falls outside out."""
    x = np.frombuffer(pcm, "<i2")
    if at < 0:
        x, at = x[-at:], 0
    x = x[: max(len(out) - at, 0)]
    out[at : at + len(x)] = x


class _RecordedCaller:
    def __init__(self, frames: AsyncIterator[tuple[bytes, float]], recorder: CallRecorder) -> None:
        self._frames = frames
        self._recorder = recorder

    def __aiter__(self) -> _RecordedCaller:
        return self

    async def __anext__(self) -> tuple[bytes, float]:
        item = await anext(self._frames)
        self._recorder._on_caller(*item)
        return item

    async def aclose(self) -> None:
        """Close the wrapped frames (a RoomCaller must be closed by whoever stops reading it)."""
        close = getattr(self._frames, "aclose", None)
        if close is not None:
            await close()


class _RecordedSink:
    def __init__(self, sink: AudioSink, recorder: CallRecorder) -> None:
        self._sink = sink
        self._recorder = recorder

    async def send(self, pcm: bytes, t: float) -> None:
        # Kept before the send: a clear() while the send is in flight must be able to drop it.
        self._recorder._on_agent(pcm, t)
        await self._sink.send(pcm, t)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sink, name)


class _RecordedBufferedSink(_RecordedSink):
    def __init__(self, sink: BufferedSink, recorder: CallRecorder) -> None:
        super().__init__(sink, recorder)
        self._buffered = sink

    def pause(self) -> None:
        self._recorder._on_pause()
        self._buffered.pause()

    def resume(self) -> None:
        self._recorder._on_resume()
        self._buffered.resume()

    def clear(self) -> None:
        self._recorder._on_clear()
        self._buffered.clear()


def encode_recording(caller: Int16Array, agent: Int16Array, sample_rate: int, fmt: RecordingFormat) -> bytes:
    """A stereo file, caller left and agent right: FLAC, or Ogg/Opus at 8, 12, 16, 24 or 48 kHz.

    Blocking, and Opus is slow (~9 s of CPU for a 10-minute call): from async code, run it in a
    thread. Raises ValueError for channels of unequal length, not 1-D int16, or empty (libsndfile
    writes an empty FLAC or Ogg that it cannot read back), and for a rate Opus does not take.
    """
    codec = _SOUNDFILE_CODECS.get(fmt)
    if codec is None:
        raise ValueError(f"recording format {fmt!r}: expected one of {sorted(_SOUNDFILE_CODECS)}")
    if caller.shape != agent.shape or caller.ndim != 1:
        raise ValueError(
            f"recording channels must be 1-D and equal: caller {caller.shape}, agent {agent.shape}"
        )
    if caller.dtype != np.int16 or agent.dtype != np.int16:
        raise ValueError(f"recording channels must be int16: caller {caller.dtype}, agent {agent.dtype}")
    if not len(caller):
        raise ValueError("recording has no audio (0 samples): nothing to encode")
    if fmt == "ogg" and sample_rate not in _OPUS_RATES_HZ:
        raise ValueError(f"Ogg/Opus encodes at {_OPUS_RATES_HZ} Hz, not {sample_rate} Hz")
    out = io.BytesIO()
    file_format, subtype = codec
    with sf.SoundFile(out, "w", samplerate=sample_rate, channels=2, format=file_format, subtype=subtype) as f:
        for i in range(0, len(caller), _BLOCK_SAMPLES):
            f.write(np.column_stack((caller[i : i + _BLOCK_SAMPLES], agent[i : i + _BLOCK_SAMPLES])))
    return out.getvalue()


_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


def recording_key(call_id: str, fmt: RecordingFormat) -> str:
    """A store key for the call's recording, safe whatever the id holds (a room name may hold
    anything): unsafe characters become "_", and a short hash of the id then keeps two ids that
    differ only there from sharing a key."""
    safe = _UNSAFE.sub("_", call_id)
    if safe != call_id or not safe:
        safe += "-" + hashlib.sha256(call_id.encode()).hexdigest()[:12]
    return f"{safe}.{fmt}"


async def save_recording(
    recorder: CallRecorder, store: RecordingStore, call_id: str, fmt: RecordingFormat = "flac"
) -> str:
    """Encode the ended call's recording (in a thread) and save it; returns its location.

    Raises ValueError when the call has no audio at all, RecordingStoreError when the store fails.
    """

    def encode() -> bytes:
        caller, agent = recorder.channels()
        return encode_recording(caller, agent, SAMPLE_RATE, fmt)

    data = await asyncio.to_thread(encode)
    return await store.save(recording_key(call_id, fmt), data, CONTENT_TYPES[fmt])
