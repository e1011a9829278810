"""A provider's model and options checked as the runtime will build them, so `voicerun validate`
refuses what a call would refuse at start (agent/_providers.py builds the same configs).

Only what the file decides is checked: a missing API key or an unreachable host belongs to the
machine a call runs on, and is reported when the provider starts.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

from pipeline import ProviderError

__all__ = ["check_provider"]


def check_provider(stage: str, provider: str, model: str | None, options: Mapping[str, Any]) -> None:
    """ValueError naming the stage, the provider and what it refuses in model or options."""
    if not options and model is None and provider in ("whisper", "hibari", "rules"):
        return  # the embedded defaults: nothing to check, and no provider module to import
    try:
        _CHECKS[(stage, provider)](model, dict(options))
    # ProviderError: an embedded engine that cannot run this config (a voice it does not ship)
    except (TypeError, ValueError, ProviderError) as exc:
        raise ValueError(f"{stage} provider {provider!r}: {exc}") from exc


_KINDS = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def _fields(config_type: type[Any], options: Mapping[str, Any]) -> None:
    """Unknown options and options of the wrong kind, for the configs the runtime builds with
    `Config(**options)` (the cloud providers' from_options check their own)."""
    fields = {f.name: f.default for f in dataclasses.fields(config_type)}
    unknown = sorted(set(options) - set(fields))
    if unknown:
        raise ValueError(
            f"unknown option(s) {', '.join(map(repr, unknown))} (known: {', '.join(sorted(fields))})"
        )
    for name, value in options.items():
        default = fields[name]
        if default is None or default is dataclasses.MISSING:
            continue
        kind = float if type(default) is float else type(default)
        numeric = kind is float and isinstance(value, int)
        if isinstance(value, bool) != isinstance(default, bool) or not (isinstance(value, kind) or numeric):
            raise ValueError(f"option {name!r} must be {_KINDS[kind]}, got {value!r}")


def _whisper(model: str | None, options: dict[str, Any]) -> None:
    from pipeline.providers import WhisperConfig, WhisperSTT

    if model is not None:
        raise ValueError(
            f"model {model!r}: whisper runs the tiny.en model inside the package; "
            "options.model_dir names another CTranslate2 Whisper model"
        )
    _fields(WhisperConfig, options)
    WhisperSTT(WhisperConfig(**options))


def _hibari(model: str | None, options: dict[str, Any]) -> None:
    from pipeline.providers import HibariConfig, HibariTTS

    if model is not None:
        options.setdefault("voice", model)  # as the runtime reads it: the model is the voice
    _fields(HibariConfig, options)
    HibariTTS(HibariConfig(**options))


def _rules(model: str | None, options: dict[str, Any]) -> None:
    if model is not None or options:
        raise ValueError("takes no model or options: it answers with the agent's rules and fallback")


def _deepgram_stt(model: str | None, options: dict[str, Any]) -> None:
    from pipeline.providers import DeepgramSTTConfig

    DeepgramSTTConfig.from_options(model, options)


def _polly(model: str | None, options: dict[str, Any]) -> None:
    from pipeline.providers import PollyConfig

    PollyConfig.from_options(model, options)


def _openai_tts(model: str | None, options: dict[str, Any]) -> None:
    from pipeline.providers import OpenAITTSConfig

    OpenAITTSConfig.from_options(model, options)


def _deepgram_tts(model: str | None, options: dict[str, Any]) -> None:
    from pipeline.providers import DeepgramTTSConfig

    DeepgramTTSConfig.from_options(model, options)


def _openai_llm(model: str | None, options: dict[str, Any]) -> None:
    from pipeline.providers import OpenAILLMConfig

    OpenAILLMConfig.from_options(model, options)


_CHECKS: dict[tuple[str, str], Callable[[str | None, dict[str, Any]], None]] = {
    ("stt", "whisper"): _whisper,
    ("stt", "deepgram"): _deepgram_stt,
    ("llm", "rules"): _rules,
    ("llm", "openai"): _openai_llm,
    ("tts", "hibari"): _hibari,
    ("tts", "polly"): _polly,
    ("tts", "openai"): _openai_tts,
    ("tts", "deepgram"): _deepgram_tts,
}
