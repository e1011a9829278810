"""Provider names in workflow files -> provider instances, shared by every call of the process.

Each configured provider (or fallback chain) is created and warmed once; SDK modules are imported
only when a workflow names them, so `voicerun --help` and offline calls never pay for them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from pipeline import LLM, STT, TTS
from workflows import ProviderSpec

P = TypeVar("P")


class ProviderConfigError(ValueError):
    """A workflow's provider settings cannot be used (unknown provider, unknown option, bad value)."""


class UnknownProviderError(ProviderConfigError):
    """A workflow names a provider this build does not have."""


class ProviderPool:
    """Creates each configured STT/TTS/LLM (or fallback chain) once and reuses it."""

    def __init__(self) -> None:
        self._stt: dict[str, STT] = {}
        self._tts: dict[str, TTS] = {}
        self._llm: dict[str, LLM] = {}

    @staticmethod
    def _key(spec: ProviderSpec) -> str:
        return spec.model_dump_json()

    async def stt(self, spec: ProviderSpec) -> STT:
        key = self._key(spec)
        if key not in self._stt:
            stt = _chain(spec, _make_stt, "stt")
            await stt.warm()
            self._stt[key] = stt
        return self._stt[key]

    async def tts(self, spec: ProviderSpec) -> TTS:
        key = self._key(spec)
        if key not in self._tts:
            tts = _chain(spec, _make_tts, "tts")
            await tts.warm()
            self._tts[key] = tts
        return self._tts[key]

    def llm(self, spec: ProviderSpec) -> LLM | None:
        """The agent's LLM; None for `rules`: no LLM, the workflow runtime answers with the agent's
        rules and its fallback line."""
        if spec.provider == "rules":
            if spec.fallback:
                raise ProviderConfigError("llm 'rules' takes no fallback: it cannot fail")
            return None
        if any(s.provider == "rules" for s in spec.fallback):
            raise ProviderConfigError(
                "llm fallback 'rules'/'local' is not supported: the agent's rules already run before any LLM"
            )
        key = self._key(spec)
        if key not in self._llm:
            self._llm[key] = _chain(spec, _make_llm, "llm")
        return self._llm[key]

    async def aclose(self) -> None:
        for stt in self._stt.values():
            await stt.aclose()
        for tts in self._tts.values():
            await tts.aclose()
        for llm in self._llm.values():
            await llm.aclose()


def _chain(spec: ProviderSpec, make: Callable[[ProviderSpec], P], stage: str) -> P:
    from pipeline.providers.fallback import FallbackLLM, FallbackSTT, FallbackTTS

    providers = [make(s) for s in spec.chain()]
    if len(providers) == 1:
        return providers[0]
    from metering._metrics import PROVIDER_FALLBACKS

    wrap: dict[str, Callable[..., Any]] = {"stt": FallbackSTT, "tts": FallbackTTS, "llm": FallbackLLM}
    result: P = wrap[stage](providers, on_switch=lambda s: PROVIDER_FALLBACKS.labels(stage=s).inc())
    return result


def _configured(stage: str, spec: ProviderSpec, build: Callable[[], P]) -> P:
    try:
        return build()
    except (TypeError, ValueError) as exc:
        raise ProviderConfigError(f"{stage} provider {spec.provider!r}: {exc}") from exc


def _make_stt(spec: ProviderSpec) -> STT:
    if spec.provider == "whisper":
        from pipeline.providers.whisper import WhisperConfig, WhisperSTT

        return _configured("stt", spec, lambda: WhisperSTT(WhisperConfig(**spec.options)))
    if spec.provider == "deepgram":
        from pipeline.providers.deepgram_stt import DeepgramSTT, DeepgramSTTConfig

        return _configured(
            "stt", spec, lambda: DeepgramSTT(DeepgramSTTConfig.from_options(spec.model, spec.options))
        )
    raise UnknownProviderError(f"unknown stt provider {spec.provider!r} (available: whisper, deepgram)")


def _make_tts(spec: ProviderSpec) -> TTS:
    if spec.provider == "hibari":
        from pipeline.providers.hibari import HibariConfig, HibariTTS

        opts = dict(spec.options)
        if spec.model:
            opts.setdefault("voice", spec.model)
        return _configured("tts", spec, lambda: HibariTTS(HibariConfig(**opts)))
    if spec.provider == "polly":
        from pipeline.providers.polly import PollyConfig, PollyTTS

        return _configured("tts", spec, lambda: PollyTTS(PollyConfig.from_options(spec.model, spec.options)))
    if spec.provider == "openai":
        from pipeline.providers.openai_tts import OpenAITTS, OpenAITTSConfig

        return _configured(
            "tts", spec, lambda: OpenAITTS(OpenAITTSConfig.from_options(spec.model, spec.options))
        )
    if spec.provider == "deepgram":
        from pipeline.providers.deepgram_tts import DeepgramTTS, DeepgramTTSConfig

        return _configured(
            "tts", spec, lambda: DeepgramTTS(DeepgramTTSConfig.from_options(spec.model, spec.options))
        )
    raise UnknownProviderError(
        f"unknown tts provider {spec.provider!r} (available: hibari, polly, openai, deepgram)"
    )


def _make_llm(spec: ProviderSpec) -> LLM:
    if spec.provider == "openai":
        from pipeline.providers.openai_llm import OpenAILLM, OpenAILLMConfig

        return _configured(
            "llm", spec, lambda: OpenAILLM(OpenAILLMConfig.from_options(spec.model, spec.options))
        )
    raise UnknownProviderError(f"unknown llm provider {spec.provider!r} (available: rules, openai)")
