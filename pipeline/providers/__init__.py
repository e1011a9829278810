"""Embedded offline providers: Whisper STT and hibari TTS, models shipped inside PyPI packages.

Importing this package is cheap: faster-whisper and hibari are imported when a provider loads.
"""

from ._registry import (
    PROVIDERS,
    ProviderEntry,
    ProviderRegistry,
    Stage,
    UnknownProviderError,
)
from .deepgram_stt import (
    DeepgramSTT,
    DeepgramSTTConfig,
    DeepgramSTTSession,
    DeepgramSTTStats,
    DeepgramUtterance,
)
from .deepgram_tts import DeepgramTTS, DeepgramTTSConfig
from .hibari import HibariConfig, HibariTTS
from .openai_llm import OpenAILLM, OpenAILLMConfig
from .openai_tts import OpenAITTS, OpenAITTSConfig
from .polly import PollyConfig, PollyEngine, PollyTTS
from .whisper import DecodeStats, WhisperConfig, WhisperSession, WhisperSTT, WhisperUtterance

__all__ = [
    "PROVIDERS",
    "DecodeStats",
    "DeepgramSTT",
    "DeepgramSTTConfig",
    "DeepgramSTTSession",
    "DeepgramSTTStats",
    "DeepgramTTS",
    "DeepgramTTSConfig",
    "DeepgramUtterance",
    "HibariConfig",
    "HibariTTS",
    "OpenAILLM",
    "OpenAILLMConfig",
    "OpenAITTS",
    "OpenAITTSConfig",
    "PollyConfig",
    "PollyEngine",
    "PollyTTS",
    "ProviderEntry",
    "ProviderRegistry",
    "Stage",
    "UnknownProviderError",
    "WhisperConfig",
    "WhisperSTT",
    "WhisperSession",
    "WhisperUtterance",
]
