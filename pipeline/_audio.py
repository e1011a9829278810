"""The one internal audio format, and conversion into it.

Everything inside the pipeline is 16 kHz, mono, signed 16-bit little-endian PCM, cut into
20 ms frames of 320 samples (640 bytes). webrtcvad accepts exactly this, Whisper wants 16 kHz,
and 20 ms is what WebRTC transports carry, so no stage resamples or re-frames on the hot path.
"""

from __future__ import annotations

import math
import stat
import struct
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import numpy.typing as npt
import soundfile as sf
import soxr
import structlog

from ._errors import AudioFormatError

SAMPLE_RATE = 16_000
FRAME_MS = 20
FRAME_SAMPLES = SAMPLE_RATE * FRAME_MS // 1000
FRAME_BYTES = FRAME_SAMPLES * 2
FRAME_S = FRAME_MS / 1000

Int16Array = npt.NDArray[np.int16]

log = structlog.get_logger("voicerun.pipeline")


def to_internal(samples: npt.NDArray[np.floating] | Int16Array, rate: int) -> Int16Array:
    """Mono samples at any rate (float in [-1, 1] or int16) -> int16 at SAMPLE_RATE, band-limited."""
    if samples.dtype == np.int16:
        x = samples.astype(np.float32) / 32768.0
    else:
        x = samples.astype(np.float32, copy=False)
    if rate != SAMPLE_RATE and x.size:
        x = soxr.resample(x, rate, SAMPLE_RATE, quality="HQ")
    return _to_int16(x)


def _to_int16(x: npt.NDArray[np.float32]) -> Int16Array:
    # 32768 (not 32767) makes int16 -> float -> int16 exact, which is what libsndfile's float view of
    # integer PCM is; a full-scale float sample clips by one step instead. NaN and infinities (a
    # corrupt float file, a broken synthesizer) become silence and full scale, not cast garbage.
    x = np.nan_to_num(x, nan=0.0, posinf=1.0, neginf=-1.0)
    return np.clip(np.round(x * 32768.0), -32768, 32767).astype(np.int16)


MIN_RATE_HZ = 8_000
MAX_RATE_HZ = 192_000
MAX_INPUT_S = 4 * 3600  # 4 hours is 460 MB of internal samples: the most one recording may hold

_BLOCK_SAMPLES = 1 << 18  # interleaved samples per read: 1 MB of float32, whatever the channel count
# Bytes per sample of the uncompressed WAV subtypes, where the data chunk's size gives the frame count.
_WAV_SAMPLE_BYTES = {"PCM_U8": 1, "PCM_S8": 1, "PCM_16": 2, "PCM_24": 3, "PCM_32": 4, "FLOAT": 4,
                     "DOUBLE": 8, "ULAW": 1, "ALAW": 1}  # fmt: skip


def read_wav(path: str | Path) -> Int16Array:
    """An audio file -> internal int16 samples: WAV of any common sample type (8/16/24/32-bit integer,
    32/64-bit float, extensible headers), FLAC, OGG or MP3; any channel count, 8 to 192 kHz, at most
    MAX_INPUT_S long.

    Raises AudioFormatError naming the file and the problem in one line, for anything unreadable.
    A file shorter than its header declares is decoded as far as it goes, with an `audio_truncated`
    warning carrying the declared and found durations.
    """
    p = Path(path)
    _check_file(p)
    try:
        f = sf.SoundFile(p)
    except sf.LibsndfileError as exc:
        raise AudioFormatError(f"{p}: not a readable audio file ({_sndfile_reason(exc)})") from exc
    except TypeError as exc:  # soundfile takes a .raw name for headerless PCM, which has no rate to read
        raise AudioFormatError(
            f"{p}: headerless audio has no sample rate; use WAV, FLAC, OGG or MP3"
        ) from exc
    except OSError as exc:
        raise AudioFormatError(f"{p}: cannot read ({exc.strerror or exc})") from exc
    with f:
        rate, header_frames = f.samplerate, f.frames
        if not MIN_RATE_HZ <= rate <= MAX_RATE_HZ:
            raise AudioFormatError(
                f"{p}: sample rate {rate} Hz is outside the supported {MIN_RATE_HZ}-{MAX_RATE_HZ} Hz"
            )
        max_frames = MAX_INPUT_S * rate
        if header_frames > max_frames:
            raise AudioFormatError(
                f"{p}: {_hms(header_frames / rate)} of audio; the limit is {_hms(MAX_INPUT_S)}"
            )
        declared = _declared_wav_frames(p, f) or header_frames
        samples, found, error, non_finite = _decode(f, p, max_frames)
    if non_finite:
        log.warning("audio_non_finite_samples", path=str(p), samples=non_finite)
    if found == 0:
        raise AudioFormatError(
            f"{p}: {f'cannot be decoded ({error})' if error else 'contains no audio samples'}"
        )
    if found < declared:
        log.warning(
            "audio_truncated",
            path=str(p),
            declared_s=round(declared / rate, 3),
            found_s=round(found / rate, 3),
            **({"error": error} if error else {}),
        )
    return samples


def _check_file(p: Path) -> None:
    try:
        st = p.stat()
    except FileNotFoundError:
        raise AudioFormatError(f"{p}: no such file") from None
    except OSError as exc:
        raise AudioFormatError(f"{p}: cannot read ({exc.strerror or exc})") from None
    if stat.S_ISDIR(st.st_mode):
        raise AudioFormatError(f"{p}: is a directory, not an audio file")
    if not stat.S_ISREG(st.st_mode):
        raise AudioFormatError(f"{p}: not a regular file")
    if st.st_size == 0:
        raise AudioFormatError(f"{p}: empty file (0 bytes)")
    try:  # libsndfile reports an unreadable file as a generic "System error"; the OS names the cause
        with p.open("rb") as fh:
            fh.read(1)
    except OSError as exc:
        raise AudioFormatError(f"{p}: cannot read ({exc.strerror or exc})") from None


def _hms(seconds: float) -> str:
    s = round(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def _sndfile_reason(exc: sf.LibsndfileError) -> str:
    return exc.error_string.strip().removeprefix("Error : ").rstrip(".") or f"libsndfile error {exc.code}"


def _decode(f: sf.SoundFile, p: Path, max_frames: int) -> tuple[Int16Array, int, str | None, int]:
    """Samples, frames decoded, the decoder's error if it stopped early, and how many samples were
    NaN or infinite (made silence or full scale before resampling, which would smear them).

    Reads block by block, mixing to mono and resampling as it goes, so memory holds the output and
    one block, never the whole file at its own rate and width.
    """
    rate, channels = f.samplerate, f.channels
    buf = np.empty((max(1, _BLOCK_SAMPLES // channels), channels), np.float32)
    resampler = (
        soxr.ResampleStream(rate, SAMPLE_RATE, 1, dtype="float32", quality="HQ")
        if rate != SAMPLE_RATE
        else None
    )
    out = np.empty(int(f.frames * SAMPLE_RATE / rate) + 64, np.int16)
    filled = found = non_finite = 0
    error: str | None = None
    while True:
        try:
            chunk = f.read(out=buf, dtype="float32")
        except sf.LibsndfileError as exc:
            # A cut-off FLAC stops with "lost sync"; the frames decoded before it are in buf, and
            # the position says how many.
            error = _sndfile_reason(exc)
            try:
                chunk = buf[: max(0, min(len(buf), f.tell() - found))]
            except sf.LibsndfileError:
                chunk = buf[:0]
        found += len(chunk)
        if found > max_frames:  # a header can understate what a decoder then finds
            raise AudioFormatError(f"{p}: more than {_hms(MAX_INPUT_S)} of audio; that is the limit")
        last = len(chunk) < len(buf)
        if not np.isfinite(chunk).all():
            non_finite += int(np.count_nonzero(~np.isfinite(chunk)))
            chunk = np.nan_to_num(chunk, nan=0.0, posinf=1.0, neginf=-1.0)
        mono = chunk[:, 0] if channels == 1 else chunk.mean(axis=1, dtype=np.float32)
        if resampler is not None:
            mono = resampler.resample_chunk(mono, last=last)
        pcm = _to_int16(mono)
        if filled + len(pcm) > len(out):
            out = np.resize(out, filled + len(pcm))
        out[filled : filled + len(pcm)] = pcm
        filled += len(pcm)
        if last:
            return out[:filled].copy(), found, error, non_finite


def _declared_wav_frames(p: Path, f: sf.SoundFile) -> int | None:
    """Frames a WAV's data chunk declares. libsndfile silently shortens a data chunk that runs past the
    end of the file, so truncation shows only here; None where the format does not say."""
    width = _WAV_SAMPLE_BYTES.get(f.subtype)
    if f.format not in ("WAV", "WAVEX") or width is None:
        return None
    with p.open("rb") as fh:
        head = fh.read(12)
        if head[8:12] != b"WAVE" or head[:4] not in (b"RIFF", b"RIFX"):
            return None
        order = "<" if head[:4] == b"RIFF" else ">"
        while len(chunk := fh.read(8)) == 8:
            size: int = struct.unpack(f"{order}I", chunk[4:])[0]
            if chunk[:4] == b"data":
                # 0 and 0xFFFFFFFF are what streaming writers leave when the length was not known
                return None if size in (0, 0xFFFFFFFF) else size // (width * f.channels)
            fh.seek(size + (size & 1), 1)
    return None


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


def band_levels_dbfs(pcm: bytes) -> tuple[float, float]:
    """Levels of a PCM frame in dBFS: the whole band, and its high band (the first difference,
    which rises 6 dB an octave: fricatives stand out of it, low-frequency room noise does not)."""
    # Runs on every caller frame of every call: the first difference's energy is taken from two
    # dot products (sum d^2 = 2 sum x^2 - x0^2 - xn^2 - 2 sum x[i]x[i+1]) instead of building it.
    # float64 keeps the subtraction exact enough for a high band 90 dB under the whole band.
    x = np.frombuffer(pcm, "<i2").astype(np.float64)
    n = x.size
    if n < 2:
        return -120.0, -120.0
    energy = float(x @ x)
    cross = float(x[1:] @ x[:-1])
    high = (2.0 * energy - float(x[0] * x[0]) - float(x[-1] * x[-1]) - 2.0 * cross) / (n - 1)
    full = energy / n
    scale = 32768.0 * 32768.0
    return (
        10.0 * math.log10(full / scale) if full > 0.0 else -120.0,
        10.0 * math.log10(high / scale) if high > 0.0 else -120.0,
    )


def write_wav(path: str | Path, channels: list[Int16Array], rate: int = SAMPLE_RATE) -> None:
    """Write one or more equal-length int16 channels as an interleaved 16-bit PCM WAV.

    A path that cannot be written raises the OSError that names why (Python opens it, not libsndfile,
    whose error would only say "System error").
    """
    data = np.stack(channels, axis=1) if len(channels) > 1 else channels[0]
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with Path(path).open("wb") as fh:
        sf.write(fh, np.ascontiguousarray(data, dtype=np.int16), rate, subtype="PCM_16", format="WAV")
