"""Provider names in workflow files -> provider instances, shared by every call of the process."""

from __future__ import annotations

from typing import Any

from pipeline import LLM, STT, TTS
from workflows import ProviderSpec

LLM_PROVIDERS = ("rules",)


class UnknownProviderError(ValueError):
    """A workflow names a provider this build does not have."""


class ProviderPool:
    """Creates each configured STT/TTS once (models load once per process) and reuses it."""

    def __init__(self) -> None:
        self._stt: dict[str, STT] = {}
        self._tts: dict[str, TTS] = {}

    @staticmethod
    def _key(spec: ProviderSpec) -> str:
        return spec.model_dump_json()

    async def stt(self, spec: ProviderSpec) -> STT:
        key = self._key(spec)
        if key not in self._stt:
            self._stt[key] = _make_stt(spec)
            await self._stt[key].warm()
        return self._stt[key]

    async def tts(self, spec: ProviderSpec) -> TTS:
        key = self._key(spec)
        if key not in self._tts:
            self._tts[key] = _make_tts(spec)
            await self._tts[key].warm()
        return self._tts[key]

    def llm(self, spec: ProviderSpec) -> LLM | None:
        """The agent's LLM; None for `rules`: no LLM, the workflow runtime answers with the agent's
        rules and its fallback line."""
        if spec.provider == "rules":
            return None
        raise UnknownProviderError(
            f"llm provider {spec.provider!r} is not available in this build "
            f"(available: {', '.join(LLM_PROVIDERS)})"
        )

    async def aclose(self) -> None:
        for stt in self._stt.values():
            await stt.aclose()
        for tts in self._tts.values():
            await tts.aclose()


def _options(spec: ProviderSpec) -> dict[str, Any]:
    return dict(spec.options)


def _make_stt(spec: ProviderSpec) -> STT:
    if spec.provider == "whisper":
        from pipeline.providers.whisper import WhisperConfig, WhisperSTT

        return WhisperSTT(WhisperConfig(**_options(spec)))
    raise UnknownProviderError(f"unknown stt provider {spec.provider!r} (available: whisper)")


def _make_tts(spec: ProviderSpec) -> TTS:
    if spec.provider == "hibari":
        from pipeline.providers.hibari import HibariConfig, HibariTTS

        opts = _options(spec)
        if spec.model:
            opts.setdefault("voice", spec.model)
        return HibariTTS(HibariConfig(**opts))
    raise UnknownProviderError(f"unknown tts provider {spec.provider!r} (available: hibari)")
