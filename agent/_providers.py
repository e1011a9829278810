"""Provider names in workflow files -> provider instances, shared by every call of the process.

Each configured provider (or fallback chain) is created and warmed once, from its entry in the
provider registry (pipeline.providers.PROVIDERS); SDK modules are imported only when a workflow
names them, so `voicerun --help` and offline calls never pay for them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import aiohttp

from pipeline import LLM, STT, TTS
from pipeline.providers import PROVIDERS, ProviderRegistry
from pipeline.providers import UnknownProviderError as RegistryUnknownProviderError
from workflows import ProviderSpec

P = TypeVar("P")
W = TypeVar("W", STT, TTS)


class ProviderConfigError(ValueError):
    """A workflow's provider settings cannot be used (unknown provider, unknown option, bad value)."""


class UnknownProviderError(ProviderConfigError):
    """A workflow names a provider this build does not have."""


class ProviderPool:
    """What the calls of a process share: each configured STT/TTS/LLM (or fallback chain), built
    once and reused, and one HTTP client session for workflow tools.

    Calls that ask for the same provider at the same moment wait for one build (a lock per
    provider), so none is built twice and leaked; a build that fails is not kept, and the next
    caller tries again.

    credentials: options added to every spec of a provider that does not set them itself, by
    provider name (e.g. {"openai": {"api_key": ...}}): the keys an operator stored for this pool's
    calls, instead of the process environment.
    """

    def __init__(
        self,
        registry: ProviderRegistry = PROVIDERS,
        *,
        credentials: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> None:
        self._registry = registry
        self._credentials = {name: dict(opts) for name, opts in (credentials or {}).items()}
        self._http: aiohttp.ClientSession | None = None
        self._stt: dict[str, STT] = {}
        self._tts: dict[str, TTS] = {}
        self._llm: dict[str, LLM] = {}
        self._building: dict[tuple[str, str], asyncio.Lock] = {}

    @property
    def registry(self) -> ProviderRegistry:
        return self._registry

    @staticmethod
    def _key(spec: ProviderSpec) -> str:
        return spec.model_dump_json()

    async def stt(self, spec: ProviderSpec) -> STT:
        return await self._warmed("stt", spec, self._stt)

    async def tts(self, spec: ProviderSpec) -> TTS:
        return await self._warmed("tts", spec, self._tts)

    async def _warmed(self, stage: str, spec: ProviderSpec, built: dict[str, W]) -> W:
        key = self._key(spec)
        if key in built:
            return built[key]
        async with self._building.setdefault((stage, key), asyncio.Lock()):
            if key in built:  # built while this caller waited
                return built[key]
            provider: W = self._chain(spec, stage)
            try:
                await provider.warm()
            except BaseException:
                await provider.aclose()
                raise
            built[key] = provider
            return provider

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
        if key not in self._llm:  # built without awaiting: no other call can get in between
            self._llm[key] = self._chain(spec, "llm")
        return self._llm[key]

    def http(self) -> aiohttp.ClientSession:
        """The process's HTTP client session for tools (one connection pool for every call).
        Cookies are never kept: a cookie one call's tool received must not reach another call."""
        if self._http is None or self._http.closed:
            self._http = aiohttp.ClientSession(
                cookie_jar=aiohttp.DummyCookieJar(),
                connector=aiohttp.TCPConnector(limit=256, limit_per_host=64),
            )
        return self._http

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.close()
        for stt in self._stt.values():
            await stt.aclose()
        for tts in self._tts.values():
            await tts.aclose()
        for llm in self._llm.values():
            await llm.aclose()

    def _chain(self, spec: ProviderSpec, stage: str) -> Any:
        return _chain(spec, lambda s: self._make(stage, s), stage)

    def _make(self, stage: str, spec: ProviderSpec) -> Any:
        try:
            entry = self._registry.entry(stage, spec.provider)
        except RegistryUnknownProviderError as exc:
            raise UnknownProviderError(str(exc)) from None
        if entry.build is None:
            raise UnknownProviderError(f"{stage} provider {spec.provider!r} has nothing to build")
        options = spec.options
        if spec.provider in self._credentials:
            options = {**self._credentials[spec.provider], **options}
        try:
            return entry.build(spec.model, options)
        except (TypeError, ValueError) as exc:
            raise ProviderConfigError(f"{stage} provider {spec.provider!r}: {exc}") from exc


def _chain(spec: ProviderSpec, make: Callable[[ProviderSpec], P], stage: str) -> P:
    from pipeline.providers.fallback import FallbackLLM, FallbackSTT, FallbackTTS

    providers = [make(s) for s in spec.chain()]
    if len(providers) == 1:
        return providers[0]
    from metering import PROVIDER_FALLBACKS

    wrap: dict[str, Callable[..., Any]] = {"stt": FallbackSTT, "tts": FallbackTTS, "llm": FallbackLLM}
    result: P = wrap[stage](providers, on_switch=lambda s: PROVIDER_FALLBACKS.labels(stage=s).inc())
    return result
