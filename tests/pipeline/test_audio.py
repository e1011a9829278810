"""Audio input of any common shape becomes 16 kHz mono int16, or fails with one line naming the file."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from hypothesis import given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

import pipeline._audio
from pipeline import FRAME_BYTES, SAMPLE_RATE, AudioFormatError, frames, read_wav, to_internal, write_wav


def signal(rate: int, seconds: float = 1.0) -> np.ndarray:
    """A known signal, evaluated at any rate: two tones below 4 kHz, so every rate carries them."""
    t = np.arange(int(rate * seconds)) / rate
    return 0.5 * np.sin(2 * np.pi * 440.0 * t) + 0.25 * np.sin(2 * np.pi * 1234.0 * t)


def expected(seconds: float = 1.0) -> np.ndarray:
    return signal(SAMPLE_RATE, seconds) * 32768.0


def tone(freq: float, rate: int, seconds: float = 1.0) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return 0.5 * np.sin(2 * np.pi * freq * t)


def peak_hz(x: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(x.astype(np.float64)))
    return float(np.argmax(spectrum) * SAMPLE_RATE / len(x))


# Tolerance in int16 steps: the quantisation of the stored sample type.
LOSSLESS = [
    ("WAV", "PCM_U8", 256),
    ("WAV", "PCM_16", 1),
    ("WAV", "PCM_24", 1),
    ("WAV", "PCM_32", 1),
    ("WAV", "FLOAT", 1),
    ("WAV", "DOUBLE", 1),
    ("WAVEX", "PCM_16", 1),
    ("WAVEX", "PCM_24", 1),
    ("WAVEX", "PCM_32", 1),
    ("WAVEX", "FLOAT", 1),
    ("FLAC", "PCM_16", 1),
    ("FLAC", "PCM_24", 1),
]


@pytest.mark.parametrize(("fmt", "subtype", "steps"), LOSSLESS, ids=[f"{f}-{s}" for f, s, _ in LOSSLESS])
def test_each_lossless_format_decodes_to_the_samples_written(
    tmp_path: Path, fmt: str, subtype: str, steps: int
) -> None:
    p = tmp_path / f"in.{'flac' if fmt == 'FLAC' else 'wav'}"
    sf.write(p, signal(SAMPLE_RATE), SAMPLE_RATE, subtype=subtype, format=fmt)
    if fmt == "WAVEX":  # what sox writes for 24/32-bit, and what the stdlib wave module refused
        assert p.read_bytes()[20:22] == b"\xfe\xff"
    out = read_wav(p)
    assert out.dtype == np.int16 and len(out) == SAMPLE_RATE
    assert np.abs(out - expected()).max() <= steps


@pytest.mark.parametrize(
    ("fmt", "subtype", "suffix"), [("OGG", "VORBIS", "ogg"), ("MP3", "MPEG_LAYER_III", "mp3")]
)
def test_lossy_formats_keep_the_signal(tmp_path: Path, fmt: str, subtype: str, suffix: str) -> None:
    p = tmp_path / f"in.{suffix}"
    sf.write(p, signal(SAMPLE_RATE, 2.0), SAMPLE_RATE, subtype=subtype, format=fmt)
    out = read_wav(p).astype(np.float64)
    assert len(out) == pytest.approx(2 * SAMPLE_RATE, abs=2000)  # MP3 adds encoder padding
    ref = expected(2.0)
    # Compare the middle second at the alignment the codec's delay gives.
    mid = ref[8000:24000]
    best = max(
        float(np.dot(out[8000 + lag : 24000 + lag], mid))
        / float(np.linalg.norm(out[8000 + lag : 24000 + lag]) * np.linalg.norm(mid))
        for lag in range(-1200, 1200)
    )
    assert best > 0.99


@pytest.mark.parametrize("rate", [8000, 11025, 22050, 44100, 48000, 96000, 192000])
def test_any_rate_in_range_is_resampled_to_the_same_signal(tmp_path: Path, rate: int) -> None:
    p = tmp_path / "in.wav"
    sf.write(p, signal(rate), rate, subtype="PCM_24")
    out = read_wav(p).astype(np.float64)
    assert len(out) == pytest.approx(SAMPLE_RATE, abs=2)
    # The resampler's filter rings at the cut ends; in between the samples match the signal.
    assert np.abs(out[400:-400] - expected()[400:-400]).max() < 0.002 * 32768


def test_stereo_is_mixed_to_mono(tmp_path: Path) -> None:
    p = tmp_path / "st.wav"
    sf.write(p, np.stack([signal(SAMPLE_RATE), np.zeros(SAMPLE_RATE)], axis=1), SAMPLE_RATE, subtype="PCM_16")
    out = read_wav(p)
    assert np.abs(out - expected() / 2).max() <= 1


def test_multichannel_is_mixed_to_mono(tmp_path: Path) -> None:
    p = tmp_path / "surround.wav"
    x = signal(SAMPLE_RATE)
    sf.write(
        p, np.stack([x, x, np.zeros_like(x), -x, x, x], axis=1), SAMPLE_RATE, subtype="FLOAT", format="WAVEX"
    )
    out = read_wav(p)
    assert np.abs(out - expected() * 3 / 6).max() <= 1


def test_long_input_is_read_in_blocks_without_seams(tmp_path: Path) -> None:
    # Several read blocks at 48 kHz: a seam between blocks would show as a jump off the signal.
    p = tmp_path / "long.wav"
    sf.write(p, signal(48000, 20.0), 48000, subtype="PCM_16")
    out = read_wav(p).astype(np.float64)
    assert len(out) == pytest.approx(20 * SAMPLE_RATE, abs=2)
    assert np.abs(out[400:-400] - expected(20.0)[400:-400]).max() < 0.002 * 32768


def test_resampling_is_band_limited_not_nearest_sample(tmp_path: Path) -> None:
    # A 12 kHz tone at 48 kHz is above the 8 kHz Nyquist limit of the output: it must vanish, not alias.
    p = tmp_path / "hi.wav"
    sf.write(p, tone(12000.0, 48000), 48000, subtype="PCM_16")
    out = read_wav(p)
    assert np.abs(out[1000:-1000]).max() < 0.01 * 32767


def test_frames_are_20ms_and_the_last_is_padded() -> None:
    chunks = list(frames(np.ones(16000 + 100, np.int16)))
    assert len(chunks) == 51
    assert all(len(c) == FRAME_BYTES for c in chunks)
    assert np.frombuffer(chunks[-1], "<i2")[100:].max() == 0


def test_a_truncated_wav_keeps_what_is_there_and_warns(tmp_path: Path) -> None:
    p = tmp_path / "t.wav"
    sf.write(p, signal(SAMPLE_RATE), SAMPLE_RATE, subtype="PCM_16")
    p.write_bytes(p.read_bytes()[:-8001])  # cut mid-sample: the header still declares a full second
    with capture_logs() as logs:
        out = read_wav(p)
    assert len(out) == 11999
    assert np.abs(out - expected()[:11999]).max() <= 1
    assert logs == [
        {
            "event": "audio_truncated",
            "log_level": "warning",
            "path": str(p),
            "declared_s": 1.0,
            "found_s": 0.75,
        }
    ]


def test_a_truncated_flac_keeps_what_decodes_and_warns(tmp_path: Path) -> None:
    p = tmp_path / "t.flac"
    sf.write(p, signal(SAMPLE_RATE, 2.0), SAMPLE_RATE, subtype="PCM_16")
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    with capture_logs() as logs:
        out = read_wav(p)
    assert 0 < len(out) < 2 * SAMPLE_RATE
    assert np.abs(out - expected(2.0)[: len(out)]).max() <= 1
    [warning] = logs
    assert warning["event"] == "audio_truncated" and warning["path"] == str(p)
    assert warning["declared_s"] == 2.0 and warning["found_s"] == round(len(out) / SAMPLE_RATE, 3)


def test_a_complete_file_does_not_warn(tmp_path: Path) -> None:
    p = tmp_path / "ok.wav"
    sf.write(p, signal(SAMPLE_RATE), SAMPLE_RATE, subtype="PCM_24", format="WAVEX")
    with capture_logs() as logs:
        read_wav(p)
    assert logs == []


@pytest.mark.parametrize("rate", [16000, 48000])
def test_nan_and_infinite_float_samples_become_silence_and_full_scale_with_a_warning(
    tmp_path: Path, rate: int
) -> None:
    x = signal(rate).astype(np.float32)
    x[rate // 4], x[rate // 2], x[3 * rate // 4] = np.nan, np.inf, -np.inf
    p = tmp_path / "broken.wav"
    sf.write(p, x, rate, subtype="FLOAT")
    with capture_logs() as logs:
        out = read_wav(p)
    assert logs == [
        {"event": "audio_non_finite_samples", "log_level": "warning", "path": str(p), "samples": 3}
    ]
    assert len(out) == SAMPLE_RATE
    # Away from the three bad samples (and, resampled, the filter's reach) the signal is intact.
    far = np.ones(SAMPLE_RATE, bool)
    for k in (4000, 8000, 12000):
        far[k - 200 : k + 200] = False
    far[:400] = far[-400:] = False
    assert np.abs(out[far] - expected()[far]).max() < 0.002 * 32768
    if rate == SAMPLE_RATE:  # not resampled: the infinities are exactly full scale
        assert (out[4000], out[8000], out[12000]) == (0, 32767, -32768)


def test_to_internal_turns_nan_into_silence() -> None:
    out = to_internal(np.array([0.5, np.nan, -np.inf, np.inf], np.float32), SAMPLE_RATE)
    assert out.tolist() == [16384, 0, -32768, 32767]


def with_rate(p: Path, rate: int) -> Path:
    data = bytearray(p.read_bytes())
    data[24:28] = rate.to_bytes(4, "little")
    data[28:32] = (rate * 2).to_bytes(4, "little")
    p.write_bytes(bytes(data))
    return p


@pytest.mark.parametrize("rate", [1, 7999, 192001, 4_000_000])
def test_a_rate_outside_8_to_192_khz_is_refused_before_decoding(tmp_path: Path, rate: int) -> None:
    # A header declaring 1 Hz used to ask the resampler for gigabytes.
    p = tmp_path / "odd.wav"
    sf.write(p, np.zeros(16000), SAMPLE_RATE, subtype="PCM_16")
    with pytest.raises(AudioFormatError) as err:
        read_wav(with_rate(p, rate))
    assert str(err.value) == f"{p}: sample rate {rate} Hz is outside the supported 8000-192000 Hz"


def test_a_recording_longer_than_the_limit_is_refused_from_its_header(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pipeline._audio, "MAX_INPUT_S", 2)
    p = sound(tmp_path / "long.wav", signal(SAMPLE_RATE, 3.0))
    with pytest.raises(AudioFormatError) as err:
        read_wav(p)
    assert str(err.value) == f"{p}: 0:00:03 of audio; the limit is 0:00:02"


def unreadable_file(tmp_path: Path) -> Path:
    p = tmp_path / "locked.wav"
    sf.write(p, np.zeros(1600), SAMPLE_RATE)
    p.chmod(0)
    if os.geteuid() != 0:
        return p
    # root reads any mode; sysfs refuses reads of a write-only attribute even to root.
    sysfs = Path("/sys/bus/pci/rescan")
    try:
        sysfs.open("rb").close()
    except PermissionError:
        return sysfs
    except OSError:
        pass
    pytest.skip("running as root with no file root cannot read")


BAD: dict[str, tuple[Callable[[Path], Path], str]] = {
    "missing": (lambda d: d / "missing.wav", "no such file"),
    "directory": (lambda d: d, "is a directory, not an audio file"),
    "empty": (lambda d: write(d / "empty.wav", b""), "empty file (0 bytes)"),
    "text": (lambda d: write(d / "notes.wav", b"this is not audio at all\n"), "not a readable audio file"),
    "png": (
        lambda d: write(d / "picture.wav", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(17)),
        "not a readable audio file",
    ),
    "cut-header": (
        lambda d: write(d / "cut.wav", b"RIFF\x24\x00\x00\x00WAVEfmt "),
        "not a readable audio file",
    ),
    "no-samples": (lambda d: sound(d / "silent.wav", np.zeros(0)), "contains no audio samples"),
    "fifo": (lambda d: fifo(d / "pipe.wav"), "not a regular file"),
    "raw": (lambda d: write(d / "pcm.raw", bytes(3200)), "headerless audio has no sample rate"),
    "unreadable": (unreadable_file, "cannot read (Permission denied)"),
}


def write(p: Path, content: bytes) -> Path:
    p.write_bytes(content)
    return p


def sound(p: Path, x: np.ndarray) -> Path:
    sf.write(p, x, SAMPLE_RATE, subtype="PCM_16")
    return p


def fifo(p: Path) -> Path:
    os.mkfifo(p)
    return p


@pytest.mark.parametrize("case", BAD)
def test_bad_input_is_one_line_naming_the_file_and_the_problem(tmp_path: Path, case: str) -> None:
    make, problem = BAD[case]
    p = make(tmp_path)
    with pytest.raises(AudioFormatError) as err:
        read_wav(p)
    message = str(err.value)
    assert message.startswith(f"{p}: ") and problem in message and "\n" not in message


def test_write_wav_writes_16_bit_pcm_that_reads_back(tmp_path: Path) -> None:
    left = np.arange(-800, 800, dtype=np.int16) * 40
    right = -left
    p = tmp_path / "sub" / "call.wav"
    write_wav(p, [left, right])
    info = sf.info(p)
    assert (info.format, info.subtype, info.channels, info.samplerate) == ("WAV", "PCM_16", 2, SAMPLE_RATE)
    back, _ = sf.read(p, dtype="int16")
    assert np.array_equal(back, np.stack([left, right], axis=1))
    write_wav(p, [left])
    assert np.array_equal(read_wav(p), left)


def test_write_wav_to_a_directory_raises_the_os_error(tmp_path: Path) -> None:
    with pytest.raises(IsADirectoryError):
        write_wav(tmp_path, [np.zeros(10, np.int16)])


@settings(max_examples=300, deadline=None)
@given(
    level=st.floats(min_value=1.0, max_value=8000.0),
    offset=st.integers(min_value=-20000, max_value=20000),
    seed=st.integers(min_value=0, max_value=2**32 - 1),
)
def test_band_levels_match_their_definition_even_under_a_dc_offset(
    level: float, offset: int, seed: int
) -> None:
    # The high band is the first difference's energy; a DC offset or a loud hum must not bury it
    # in rounding (it is computed without building the difference).
    rng = np.random.default_rng(seed)
    x = np.clip(rng.standard_normal(320) * level + offset, -32768, 32767).astype("<i2")
    full, high = pipeline._audio.band_levels_dbfs(x.tobytes())
    f = x.astype(np.float64)
    d = np.diff(f)
    assert full == pytest.approx(10 * np.log10(np.mean(f * f) / 32768.0**2), abs=1e-6)
    assert high == pytest.approx(10 * np.log10(np.mean(d * d) / 32768.0**2), abs=1e-3)
