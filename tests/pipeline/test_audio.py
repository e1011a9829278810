"""WAV input of any common PCM shape becomes 16 kHz mono int16, or fails with a clear error."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import pytest

from pipeline import FRAME_BYTES, SAMPLE_RATE, AudioFormatError, frames, read_wav


def write(path: Path, data: np.ndarray, rate: int, width: int, channels: int = 1) -> Path:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(data.tobytes())
    return path


def tone(freq: float, rate: int, seconds: float = 1.0) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return 0.5 * np.sin(2 * np.pi * freq * t)


def encode(x: np.ndarray, width: int) -> np.ndarray:
    if width == 1:
        return np.round(x * 127 + 128).astype(np.uint8)
    if width == 2:
        return np.round(x * 32767).astype("<i2")
    if width == 3:
        v = np.round(x * 8388607).astype(np.int32)
        b = np.stack([v & 0xFF, (v >> 8) & 0xFF, (v >> 16) & 0xFF], axis=1).astype(np.uint8)
        return b.reshape(-1)
    return np.round(x * 2147483647).astype("<i4")


def peak_hz(x: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(x.astype(np.float64)))
    return float(np.argmax(spectrum) * SAMPLE_RATE / len(x))


@pytest.mark.parametrize("width", [1, 2, 3, 4])
@pytest.mark.parametrize("rate", [8000, 16000, 22050, 44100, 48000])
def test_pcm_wav_is_converted_keeping_pitch_and_duration(tmp_path: Path, width: int, rate: int) -> None:
    x = tone(440.0, rate)
    out = read_wav(write(tmp_path / "in.wav", encode(x, width), rate, width))
    assert out.dtype == np.int16
    assert len(out) == pytest.approx(SAMPLE_RATE, abs=2)
    assert peak_hz(out) == pytest.approx(440.0, abs=2)
    assert np.abs(out).max() / 32767 == pytest.approx(0.5, abs=0.03)


def test_stereo_is_mixed_to_mono(tmp_path: Path) -> None:
    left, right = tone(300.0, 16000), np.zeros(16000)
    data = encode(np.stack([left, right], axis=1).reshape(-1), 2)
    out = read_wav(write(tmp_path / "st.wav", data, 16000, 2, channels=2))
    assert len(out) == 16000
    assert np.abs(out).max() / 32767 == pytest.approx(0.25, abs=0.02)


def test_resampling_is_band_limited_not_nearest_sample(tmp_path: Path) -> None:
    # A 7 kHz tone at 48 kHz sits below the 8 kHz Nyquist limit; a 12 kHz one must vanish, not alias.
    x = tone(12000.0, 48000)
    out = read_wav(write(tmp_path / "hi.wav", encode(x, 2), 48000, 2))
    assert np.abs(out[1000:-1000]).max() < 0.01 * 32767


def test_frames_are_20ms_and_the_last_is_padded() -> None:
    chunks = list(frames(np.ones(16000 + 100, np.int16)))
    assert len(chunks) == 51
    assert all(len(c) == FRAME_BYTES for c in chunks)
    assert np.frombuffer(chunks[-1], "<i2")[100:].max() == 0


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, "no such file"),
        (b"", "not a readable PCM WAV"),
        (b"this is not audio at all", "not a readable PCM WAV"),
        (b"RIFF\x24\x00\x00\x00WAVEfmt ", "not a readable PCM WAV"),
    ],
)
def test_unreadable_input_names_the_file_and_the_problem(
    tmp_path: Path, content: bytes | None, expected: str
) -> None:
    p = tmp_path / "caller.wav"
    if content is not None:
        p.write_bytes(content)
    with pytest.raises(AudioFormatError) as err:
        read_wav(p)
    assert str(p) in str(err.value) and expected in str(err.value)


def test_wav_with_no_samples_is_an_error(tmp_path: Path) -> None:
    p = write(tmp_path / "empty.wav", np.zeros(0, np.int16), 16000, 2)
    with pytest.raises(AudioFormatError, match="contains no audio samples"):
        read_wav(p)


def test_truncated_wav_keeps_what_is_there(tmp_path: Path) -> None:
    p = write(tmp_path / "t.wav", encode(tone(440.0, 16000), 2), 16000, 2)
    p.write_bytes(p.read_bytes()[:-8001])  # cut mid-sample: the header still claims a full second
    out = read_wav(p)
    assert 11000 < len(out) < 12100
