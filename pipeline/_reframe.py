"""Transport audio <-> internal frames, streaming. `InboundReframer`: any frame size, rate and
channel count in, whole 20 ms internal frames out. `OutboundReframer`: internal frames in, frames of
the transport's size and rate out.

Each direction keeps one soxr stream for the whole call, so the filter's state runs across frame
boundaries (no clicks, no edge effects per frame) and the sample count never drifts: N seconds in
is N seconds out, less what the filter holds until `flush()`. What is left over between frames is one
bytearray bounded by a frame plus one push; nothing held grows with the call.

Two soxr engines, both HQ, chosen per reframer. The default (block) engine filters in DFT blocks
and hands out its output a block at a time, so audio waits inside it; `low_latency=True` takes
soxr's variable-rate engine, which hands out output steadily, at several times the CPU. Per 20 ms
of audio, and the most audio held back (filter and partial frame), from bench/reframe.py on the
shared 2-core machine at load ~4 (so upper figures):

    direction                    block              low_latency
    in  48 kHz 10 ms mono        13 us, 50 ms       61 us, 30 ms
    in  48 kHz 10 ms stereo      37 us, 50 ms       87 us, 30 ms
    in  44.1 kHz 10 ms           15 us, 60 ms       59 us, 30 ms
    in  8 kHz 20 ms              6 us, 120 ms       14 us, 40 ms
    in  16 kHz mono              2.4 us, 0          (no filter)
    out 48 kHz 10 ms             10 us, 40 ms       29 us, 20 ms
    out 8 kHz 20 ms              6 us, 120 ms       11 us, 20 ms

The hold adds to the silence the caller hears after speaking, so telephone audio wants
`low_latency`; at 48 kHz, in and out, it costs ~70 us more per 20 ms of each call: a whole core
at 300 calls, which is why it is not the default.
Either way it is inline work, as STYLE.md says: a thread hop costs more. python-soxr does not
expose libsoxr's block size, which would be the cheaper fix.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import soxr

from ._audio import FRAME_BYTES, MAX_RATE_HZ, MIN_RATE_HZ, SAMPLE_RATE
from ._errors import AudioFormatError

__all__ = ["InboundReframer", "OutboundReframer"]

# HQ is what read_wav/to_internal use; VHQ's longer filter buys nothing audible at 16 kHz.
_QUALITY = "HQ"


def _check_rate(what: str, rate: int) -> None:
    if not MIN_RATE_HZ <= rate <= MAX_RATE_HZ:
        raise AudioFormatError(
            f"{what}: sample rate {rate} Hz is outside the supported {MIN_RATE_HZ}-{MAX_RATE_HZ} Hz"
        )


def _check_channels(what: str, channels: int) -> None:
    if not 1 <= channels <= 8:
        raise AudioFormatError(f"{what}: {channels} channels; 1 to 8 are supported")


class _Stream:
    """One rate conversion of mono int16 with its state, or a pass-through at equal rates."""

    def __init__(self, in_rate: int, out_rate: int, low_latency: bool) -> None:
        self.in_rate, self.out_rate = in_rate, out_rate
        self._soxr = (
            soxr.ResampleStream(in_rate, out_rate, 1, dtype="int16", quality=_QUALITY, vr=low_latency)
            if in_rate != out_rate
            else None
        )

    def convert(self, x: np.ndarray, *, last: bool = False) -> bytes:
        if self._soxr is None:
            return x.tobytes()
        out: np.ndarray = self._soxr.resample_chunk(x, last=last)
        return out.tobytes()

    def tail(self) -> bytes:
        """The samples still inside the filter; the stream is then ready for a fresh signal."""
        if self._soxr is None:
            return b""
        out: np.ndarray = self._soxr.resample_chunk(np.zeros(0, np.int16), last=True)
        self._soxr.clear()
        return out.tobytes()

    def clear(self) -> None:
        if self._soxr is not None:
            self._soxr.clear()


class InboundReframer:
    """Caller audio as the transport delivers it -> internal frames (16 kHz mono int16, 20 ms).

    A change of rate between pushes (a transport renegotiating) drains the old filter into the
    stream before the new one starts, so no audio is lost at the switch. `low_latency`: soxr's
    steady engine, for telephone audio (see the module's table).
    """

    def __init__(self, *, low_latency: bool = False) -> None:
        self._low_latency = low_latency
        self._stream: _Stream | None = None
        self._pending = bytearray()

    def push(self, pcm: bytes, rate: int, channels: int = 1) -> Iterator[bytes]:
        """The whole internal frames this audio completes; the rest waits for the next push.

        `pcm` is interleaved signed 16-bit little-endian. Raises AudioFormatError for a rate or
        channel count out of range, or bytes that are not whole samples of every channel.
        """
        _check_rate("transport audio", rate)
        _check_channels("transport audio", channels)
        if len(pcm) % (2 * channels):
            raise AudioFormatError(
                f"transport audio: {len(pcm)} bytes are not whole 16-bit samples of {channels} channel(s)"
            )
        x = np.frombuffer(pcm, "<i2")
        if channels > 1:
            # the mean, rounded half up, in integers (float and rint cost three times as much); the
            # int32 sum of 8 channels cannot overflow
            total = x.reshape(-1, channels).sum(axis=1, dtype=np.int32)
            x = ((total + channels // 2) // channels).astype(np.int16)
        if self._stream is None or self._stream.in_rate != rate:
            if self._stream is not None:
                self._pending += self._stream.tail()
            self._stream = _Stream(rate, SAMPLE_RATE, self._low_latency)
        self._pending += self._stream.convert(x)
        return self._take()

    def flush(self) -> Iterator[bytes]:
        """End of the call's audio: what the filter still holds, the last frame padded with silence.
        The reframer is then empty and ready for a new stream."""
        if self._stream is not None:
            self._pending += self._stream.tail()
        if self._pending and len(self._pending) % FRAME_BYTES:
            self._pending += bytes(FRAME_BYTES - len(self._pending) % FRAME_BYTES)
        return self._take()

    def reset(self) -> None:
        """Drop everything held, partial frame and filter state alike."""
        self._pending.clear()
        if self._stream is not None:
            self._stream.clear()

    def _take(self) -> Iterator[bytes]:
        # Cut now, not lazily: a caller that stops iterating halfway must not see frames twice.
        whole = len(self._pending) - len(self._pending) % FRAME_BYTES
        chunk = bytes(self._pending[:whole])
        del self._pending[:whole]
        return (chunk[i : i + FRAME_BYTES] for i in range(0, whole, FRAME_BYTES))


class OutboundReframer:
    """Internal frames -> frames of the transport's rate, length and channel count (for a LiveKit
    AudioSource: 48 kHz, 10 ms, mono).

    `clear()` drops what is buffered at once (a barge-in: the caller must not hear the rest);
    `flush()` hands over the end of the audio at the end of a call or reply. `low_latency` as for
    InboundReframer.
    """

    def __init__(self, rate: int, frame_ms: int, channels: int = 1, *, low_latency: bool = False) -> None:
        _check_rate("transport audio", rate)
        _check_channels("transport audio", channels)
        if frame_ms <= 0 or (rate * frame_ms) % 1000:
            raise AudioFormatError(
                f"transport audio: a {frame_ms} ms frame is not a whole number of samples at {rate} Hz"
            )
        self.rate, self.channels = rate, channels
        self.frame_samples = rate * frame_ms // 1000
        self._frame_bytes = self.frame_samples * 2  # mono; channels are copied when cut
        self._stream = _Stream(SAMPLE_RATE, rate, low_latency)
        self._pending = bytearray()

    @property
    def buffered_s(self) -> float:
        """Audio held here, not yet handed to the transport."""
        return len(self._pending) / 2 / self.rate

    def push(self, frame: bytes) -> Iterator[bytes]:
        """The transport frames this internal audio completes (any whole number of samples)."""
        if len(frame) % 2:
            raise AudioFormatError(f"agent audio: {len(frame)} bytes are not whole 16-bit samples")
        self._pending += self._stream.convert(np.frombuffer(frame, "<i2"))
        return self._take()

    def flush(self) -> Iterator[bytes]:
        """The rest of the audio, the last frame padded with silence; then ready for a new stream."""
        self._pending += self._stream.tail()
        if self._pending and len(self._pending) % self._frame_bytes:
            self._pending += bytes(self._frame_bytes - len(self._pending) % self._frame_bytes)
        return self._take()

    def clear(self) -> None:
        """Drop buffered audio and the filter's state at once: nothing of it reaches the caller."""
        self._pending.clear()
        self._stream.clear()

    def _take(self) -> Iterator[bytes]:
        whole = len(self._pending) - len(self._pending) % self._frame_bytes
        chunk = bytes(self._pending[:whole])
        del self._pending[:whole]
        n = self._frame_bytes
        if self.channels == 1:
            return (chunk[i : i + n] for i in range(0, whole, n))
        return (
            np.repeat(np.frombuffer(chunk[i : i + n], "<i2"), self.channels).tobytes()
            for i in range(0, whole, n)
        )
