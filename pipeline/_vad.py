"""Voice activity and endpointing on 20 ms frames with webrtcvad.

webrtcvad is a few microseconds a frame, so it runs inline on the audio path. Its own hangover
keeps calling ~80 ms of trailing silence "speech", and it flags quiet noise; an energy gate fixes
both, so "last voiced audio" is where a listener hears the caller stop.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Literal

import webrtcvad

from ._audio import FRAME_MS, SAMPLE_RATE, rms_dbfs


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

    def __post_init__(self) -> None:
        if self.mode not in (0, 1, 2, 3):
            raise ValueError(f"vad mode must be 0-3, got {self.mode}")
        for name in ("start_voiced_ms", "end_silence_ms", "preroll_ms"):
            if getattr(self, name) < 0:
                raise ValueError(f"vad {name} must be >= 0, got {getattr(self, name)}")


@dataclass(frozen=True, slots=True)
class VADResult:
    """What one frame meant. `voiced` is the gated per-frame decision."""

    voiced: bool
    event: Literal["start", "end"] | None = None
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
        if rms_dbfs(pcm) < self.config.min_level_dbfs:
            return False
        return bool(self._vad.is_speech(pcm, SAMPLE_RATE))

    def process(self, pcm: bytes, t_s: float) -> VADResult:
        """Classify the frame that starts at t_s."""
        voiced = self.is_voiced(pcm)
        if voiced:
            self._last_voiced_end_s = t_s + FRAME_MS / 1000
        if not self.in_speech:
            self._history.append(pcm)
            if not voiced:
                self._run = 0
                return VADResult(False)
            if self._run == 0:
                self._run_start_s = t_s
            self._run += 1
            if self._run < self._start_frames:
                return VADResult(True)
            self.in_speech = True
            self._silent = 0
            preroll = tuple(self._history)[:-1]
            self._history.clear()
            return VADResult(True, "start", preroll=preroll, onset_s=self._run_start_s)
        if voiced:
            self._silent = 0
            return VADResult(True)
        self._silent += 1
        if self._silent < self._end_frames:
            return VADResult(False)
        self.in_speech = False
        self._run = 0
        return VADResult(False, "end", last_voiced_s=self._last_voiced_end_s)
