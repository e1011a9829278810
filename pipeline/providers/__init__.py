"""Embedded offline providers: Whisper STT and hibari TTS, models shipped inside PyPI packages.

Importing this package is cheap: faster-whisper and hibari are imported when a provider loads.
"""

from .hibari import HibariConfig, HibariTTS
from .whisper import DecodeStats, WhisperConfig, WhisperSession, WhisperSTT, WhisperUtterance

__all__ = [
    "DecodeStats",
    "HibariConfig",
    "HibariTTS",
    "WhisperConfig",
    "WhisperSTT",
    "WhisperSession",
    "WhisperUtterance",
]
