"""Voice activity and endpointing on 20 ms frames with webrtcvad.

webrtcvad is a few microseconds a frame, so it runs inline on the audio path. Its own hangover
keeps calling ~80 ms of trailing silence "speech", and it flags quiet noise; an energy gate fixes
both, so "last voiced audio" is where a listener hears the caller stop.

webrtcvad only calls voiced sound speech, so a word that starts with /s/, /f/ or /t/ ("Stop",
"Sorry", "Four") is voiced 60-180 ms after the caller is heard. The Endpointer therefore also
reports an energy onset: a frame well above the line's own noise floor, in the whole band or in
its high band (where fricatives are and pink room noise is not). The session pauses the agent on
it and lets the VAD confirm or undo it.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Literal

import webrtcvad

from ._audio import FRAME_MS, SAMPLE_RATE, band_levels_dbfs, rms_dbfs


@dataclass(frozen=True, slots=True)
class VADConfig:
    mode: int = 2
    """webrtcvad aggressiveness, 0 (permissive) to 3 (strict)."""
    min_level_dbfs: float = -50.0
    """Frames quieter than this are silence whatever webrtcvad says."""
    start_voiced_ms: int = 60
    """Consecutive voiced audio that starts an utterance."""
    end_silence_ms: int = 300
    """Silence after the last voiced frame that ends an utterance (the endpoint)."""
    preroll_ms: int = 300
    """Audio kept from before the start so the first syllable reaches STT."""
    onset_margin_db: float = 12.0
    """A frame this much above the noise floor (whole band or high band) is an energy onset."""
    onset_min_dbfs: float = -60.0
    """Frames quieter than this are never an onset, however quiet the line."""

    def __post_init__(self) -> None:
        if self.mode not in (0, 1, 2, 3):
            raise ValueError(f"vad mode must be 0-3, got {self.mode}")
        for name in ("start_voiced_ms", "end_silence_ms", "preroll_ms"):
            if getattr(self, name) < 0:
                raise ValueError(f"vad {name} must be >= 0, got {getattr(self, name)}")
        if not self.onset_margin_db > 0:
            raise ValueError(f"vad onset_margin_db must be > 0, got {self.onset_margin_db}")


@dataclass(frozen=True, slots=True)
class VADResult:
    """What one frame meant. `voiced` is the gated per-frame decision."""

    voiced: bool
    event: Literal["start", "end"] | None = None
    onset: bool = False
    """Outside an utterance: this frame is well above the line's noise floor (maybe speech that
    the VAD has not called voiced yet)."""
    preroll: tuple[bytes, ...] = ()
    """On "start": the frames before this one that belong to the utterance, oldest first."""
    onset_s: float = 0.0
    """On "start": time of the first voiced frame of the utterance."""
    last_voiced_s: float = 0.0
    """On "end": time at which the last voiced frame ended."""


class Endpointer:
    """Turns a stream of frames into utterance start/end events. One per caller stream."""

    def __init__(self, config: VADConfig) -> None:
        self.config = config
        self._vad = webrtcvad.Vad(config.mode)
        self._start_frames = max(1, config.start_voiced_ms // FRAME_MS)
        self._end_frames = max(1, config.end_silence_ms // FRAME_MS)
        self._history: deque[bytes] = deque(maxlen=max(1, config.preroll_ms // FRAME_MS) + self._start_frames)
        self._run = 0
        self._run_start_s = 0.0
        self._silent = 0
        self.in_speech = False
        self._last_voiced_end_s = 0.0
        self._floor = _NoiseFloor()

    def reset(self) -> None:
        self._history.clear()
        self._run = 0
        self._silent = 0
        self.in_speech = False

    @property
    def last_voiced_end_s(self) -> float:
        """When the last voiced frame ended."""
        return self._last_voiced_end_s

    def end_now(self) -> float:
        """End the utterance in progress here (the caller decided the turn is over before the
        silence timeout); returns when its last voiced frame ended."""
        self.in_speech = False
        self._run = 0
        self._silent = 0
        return self._last_voiced_end_s

    def is_voiced(self, pcm: bytes) -> bool:
        return self._is_voiced(pcm, rms_dbfs(pcm))

    def _is_voiced(self, pcm: bytes, level_dbfs: float) -> bool:
        if level_dbfs < self.config.min_level_dbfs:
            return False
        return bool(self._vad.is_speech(pcm, SAMPLE_RATE))

    def process(self, pcm: bytes, t_s: float) -> VADResult:
        """Classify the frame that starts at t_s."""
        level, high = band_levels_dbfs(pcm)
        voiced = self._is_voiced(pcm, level)
        if voiced:
            self._last_voiced_end_s = t_s + FRAME_MS / 1000
        onset = False
        if not self.in_speech:
            onset = self._floor.above(level, high, self.config.onset_margin_db, self.config.onset_min_dbfs)
            self._floor.track(level, high)
        if not self.in_speech:
            self._history.append(pcm)
            if not voiced:
                self._run = 0
                return _ONSET if onset else _UNVOICED
            if self._run == 0:
                self._run_start_s = t_s
            self._run += 1
            if self._run < self._start_frames:
                return _VOICED_ONSET if onset else _VOICED
            self.in_speech = True
            self._silent = 0
            preroll = tuple(self._history)[:-1]
            self._history.clear()
            return VADResult(True, "start", preroll=preroll, onset_s=self._run_start_s)
        if voiced:
            self._silent = 0
            return _VOICED
        self._silent += 1
        if self._silent < self._end_frames:
            return _UNVOICED
        self.in_speech = False
        self._run = 0
        return VADResult(False, "end", last_voiced_s=self._last_voiced_end_s)


# The results of most frames, shared (VADResult is immutable): one allocation less per frame.
_UNVOICED = VADResult(False)
_VOICED = VADResult(True)
_ONSET = VADResult(False, onset=True)
_VOICED_ONSET = VADResult(True, onset=True)


class _NoiseFloor:
    """The line's quiet level, whole band and high band, outside the caller's speech: a quantile
    tracker in dB that steps down faster than up (and the faster the further the line is below
    it), so it settles among the quietest frames (steady noise stays well under the margin), a
    150 ms fricative lifts it by under a decibel, and a line that turns 12 dB noisier is learnt in
    about 2.5 s."""

    __slots__ = ("high", "level")

    _UP_DB = 0.1
    _DOWN_DB = 0.3

    def __init__(self) -> None:
        self.level: float | None = None
        self.high = 0.0

    def above(self, level: float, high: float, margin_db: float, min_dbfs: float) -> bool:
        if self.level is None:
            return False
        return (level >= min_dbfs and level >= self.level + margin_db) or (
            high >= min_dbfs and high >= self.high + margin_db
        )

    def track(self, level: float, high: float) -> None:
        if self.level is None:
            self.level, self.high = level, high
            return
        self.level = _step(self.level, level, self._UP_DB, self._DOWN_DB)
        self.high = _step(self.high, high, self._UP_DB, self._DOWN_DB)


def _step(floor: float, level: float, up: float, down: float) -> float:
    if level > floor:
        return min(level, floor + up)
    # Far above a quieter line (it started on speech, or the noise stopped): close in fast.
    return max(level, floor - down - 0.2 * (floor - level))
