"""The one internal audio format, and conversion into it.

Everything inside the pipeline is 16 kHz, mono, signed 16-bit little-endian PCM, cut into
20 ms frames of 320 samples (640 bytes). webrtcvad accepts exactly this, Whisper wants 16 kHz,
and 20 ms is what WebRTC transports carry, so no stage resamples or re-frames on the hot path.
"""

from __future__ import annotations

import wave
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import numpy.typing as npt
import soxr

from ._errors import AudioFormatError

SAMPLE_RATE = 16_000
FRAME_MS = 20
FRAME_SAMPLES = SAMPLE_RATE * FRAME_MS // 1000
FRAME_BYTES = FRAME_SAMPLES * 2
FRAME_S = FRAME_MS / 1000

Int16Array = npt.NDArray[np.int16]


def to_internal(samples: npt.NDArray[np.floating] | Int16Array, rate: int) -> Int16Array:
    """Mono samples at any rate (float in [-1, 1] or int16) -> int16 at SAMPLE_RATE, band-limited."""
    if samples.dtype == np.int16:
        x = samples.astype(np.float32) / 32768.0
    else:
        x = samples.astype(np.float32, copy=False)
    if rate != SAMPLE_RATE and x.size:
        x = soxr.resample(x, rate, SAMPLE_RATE, quality="HQ")
    return np.clip(np.round(x * 32767.0), -32768, 32767).astype(np.int16)


def read_wav(path: str | Path) -> Int16Array:
    """Any integer-PCM WAV (8/16/24/32-bit, any rate, mono or stereo) -> internal int16 samples.

    Raises AudioFormatError naming the file for anything unreadable, so callers can print one line.
    """
    p = Path(path)
    if not p.exists():
        raise AudioFormatError(f"{p}: no such file")
    if p.is_dir():
        raise AudioFormatError(f"{p}: is a directory, not a WAV file")
    try:
        with wave.open(str(p), "rb") as w:
            channels, width, rate, n = w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getnframes()
            raw = w.readframes(n)
    except (wave.Error, EOFError) as exc:
        raise AudioFormatError(f"{p}: not a readable PCM WAV file ({exc or 'truncated header'})") from exc
    except OSError as exc:
        raise AudioFormatError(f"{p}: cannot read ({exc.strerror or exc})") from exc
    if rate <= 0 or channels <= 0:
        raise AudioFormatError(f"{p}: invalid WAV header (rate {rate}, channels {channels})")
    frame_width = width * channels
    usable = len(raw) - len(raw) % frame_width
    if usable == 0:
        raise AudioFormatError(f"{p}: contains no audio samples")
    raw = raw[:usable]
    samples = _decode_pcm(raw, width, p)
    mono = samples.reshape(-1, channels).mean(axis=1) if channels > 1 else samples
    return to_internal(mono, rate)


def _decode_pcm(raw: bytes, width: int, p: Path) -> npt.NDArray[np.float32]:
    if width == 1:  # 8-bit WAV is unsigned
        return (np.frombuffer(raw, np.uint8).astype(np.float32) - 128.0) / 128.0
    if width == 2:
        return np.frombuffer(raw, "<i2").astype(np.float32) / 32768.0
    if width == 3:
        b = np.frombuffer(raw, np.uint8).reshape(-1, 3).astype(np.int32)
        v = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
        v = np.where(v & 0x800000, v - 0x1000000, v)
        return v.astype(np.float32) / 8388608.0
    if width == 4:
        return (np.frombuffer(raw, "<i4").astype(np.float64) / 2147483648.0).astype(np.float32)
    raise AudioFormatError(f"{p}: unsupported sample width of {width * 8} bits")


def frames(samples: Int16Array) -> Iterator[bytes]:
    """Cut samples into FRAME_BYTES frames; the last one is padded with silence."""
    for start in range(0, len(samples), FRAME_SAMPLES):
        chunk = samples[start : start + FRAME_SAMPLES]
        if len(chunk) < FRAME_SAMPLES:
            chunk = np.concatenate([chunk, np.zeros(FRAME_SAMPLES - len(chunk), np.int16)])
        yield chunk.astype("<i2", copy=False).tobytes()


def rms_dbfs(pcm: bytes) -> float:
    """Level of a PCM frame in dBFS (-120 for digital silence)."""
    x = np.frombuffer(pcm, "<i2").astype(np.float32)
    if not x.size:
        return -120.0
    mean_square = float(np.dot(x, x)) / x.size
    if mean_square <= 0.0:
        return -120.0
    return 10.0 * float(np.log10(mean_square / (32768.0 * 32768.0)))


def write_wav(path: str | Path, channels: list[Int16Array], rate: int = SAMPLE_RATE) -> None:
    """Write one or more equal-length int16 channels as an interleaved PCM WAV."""
    data = np.stack(channels, axis=1) if len(channels) > 1 else channels[0]
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(len(channels))
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(np.ascontiguousarray(data, dtype="<i2").tobytes())
