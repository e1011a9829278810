"""Fallback chains: a stage tries its providers in order and, once one fails, stays switched for
`recover_after_s` (a flapping provider would otherwise cost a timeout on every turn), then tries
the first provider again. TTS and LLM providers are shared by the calls of a process, so for them
this is a process-wide circuit breaker; an STT chain lives in each call's session.

What is switched over, and how the caller notices:
- TTS: a segment whose provider fails is synthesized again, whole, by the next one (if the first
  already produced some audio the caller hears the sentence restart, in the next voice; nothing
  is skipped).
- LLM: a failure before the first event moves the same request to the next provider, with no
  gap beyond the failed attempt; a failure mid-reply ends that reply (its words were spoken) and
  the next turn uses the next provider.
- STT: every utterance keeps its audio until its transcript is final, so when a provider fails
  the same audio is replayed into the next one and no words are lost.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import replace
from typing import Generic, Protocol, TypeVar

import structlog

from .._errors import ProviderError
from .._llm import LLM, LLMEvent, LLMUsage, Message, ToolSpec
from .._stt import STT, InterimCallback, STTSession, Transcript, Utterance
from .._tts import TTS, Synthesis

log = structlog.get_logger("voicerun.providers")


RECOVER_AFTER_S = 60.0


OnSwitch = Callable[[str], None]
"""Told the stage ("stt", "llm", "tts") each time a chain moves to its next provider."""


class _Chain:
    """Which provider of a chain is current; counts and logs every switch and every recovery."""

    def __init__(
        self,
        stage: str,
        names: Sequence[str],
        recover_after_s: float = RECOVER_AFTER_S,
        clock: Callable[[], float] = time.monotonic,
        on_switch: OnSwitch | None = None,
    ) -> None:
        if not names:
            raise ValueError(f"a {stage} fallback chain needs at least one provider")
        self.stage = stage
        self.names = tuple(names)
        self.switches = 0
        self._current = 0
        self._switched_at = 0.0
        self._recover_after_s = recover_after_s
        self._clock = clock
        self._on_switch = on_switch

    @property
    def current(self) -> int:
        if self._current and self._clock() - self._switched_at >= self._recover_after_s:
            log.info(
                "provider_recovering",
                stage=self.stage,
                provider=self.names[0],
                after=self.names[self._current],
            )
            self._current = 0
        return self._current

    def fail(self, index: int, error: BaseException) -> bool:
        """Provider `index` failed: move past it. False when no provider is left."""
        if index + 1 >= len(self.names):
            return False
        if self._current <= index:
            self._current = index + 1
            self._switched_at = self._clock()
            self.switches += 1
            log.warning(
                "provider_fallback",
                stage=self.stage,
                failed=self.names[index],
                next=self.names[self._current],
                error=str(error),
            )
            if self._on_switch is not None:
                self._on_switch(self.stage)
        return True


class _Provider(Protocol):
    name: str
    model: str

    async def warm(self) -> None: ...

    async def aclose(self) -> None: ...


P = TypeVar("P", bound=_Provider)


class _Chained(Generic[P]):
    """What a TTS and an LLM chain share: the providers in order, the switch state, and warming
    and closing them all."""

    providers: tuple[P, ...]
    _chain: _Chain

    def _set_up(
        self, stage: str, providers: Sequence[P], recover_after_s: float, on_switch: OnSwitch | None
    ) -> None:
        self.providers = tuple(providers)
        self._chain = _Chain(stage, [p.name for p in self.providers], recover_after_s, on_switch=on_switch)
        self.name = self.providers[0].name
        self.model = self.providers[0].model

    @property
    def switches(self) -> int:
        return self._chain.switches

    async def warm(self) -> None:
        for p in self.providers:
            await p.warm()

    async def aclose(self) -> None:
        for p in self.providers:
            await p.aclose()


class FallbackTTS(_Chained[TTS], TTS):
    def __init__(
        self,
        providers: Sequence[TTS],
        *,
        recover_after_s: float = RECOVER_AFTER_S,
        on_switch: OnSwitch | None = None,
    ) -> None:
        self._set_up("tts", providers, recover_after_s, on_switch)

    def synthesize(self, text: str) -> AsyncIterator[bytes]:
        return aiter(self.synthesis(text))

    def synthesis(self, text: str) -> Synthesis:
        return Synthesis(lambda syn: self._synthesize(text, syn))

    async def _synthesize(self, text: str, syn: Synthesis) -> AsyncIterator[bytes]:
        index = self._chain.current
        while True:
            syn.served_by = index
            try:
                async for pcm in self.providers[index].synthesize(text):
                    yield pcm
                return
            except ProviderError as exc:
                if not self._chain.fail(index, exc):
                    raise
                index += 1  # not `current`: a recovery must not send this request back to the failed one


class FallbackLLM(_Chained[LLM], LLM):
    def __init__(
        self,
        providers: Sequence[LLM],
        *,
        recover_after_s: float = RECOVER_AFTER_S,
        on_switch: OnSwitch | None = None,
    ) -> None:
        self._set_up("llm", providers, recover_after_s, on_switch)

    async def chat(
        self, messages: Sequence[Message], tools: Sequence[ToolSpec] = ()
    ) -> AsyncIterator[LLMEvent]:
        index = self._chain.current
        while True:
            started = False
            try:
                async for ev in self.providers[index].chat(messages, tools):
                    started = True
                    yield replace(ev, served_by=index) if isinstance(ev, LLMUsage) else ev
                return
            except ProviderError as exc:
                moved = self._chain.fail(index, exc)
                if started or not moved:
                    raise  # words already spoken are not taken back; the next turn uses the next one
                index += 1  # not `current`: a recovery must not send this request back to the failed one


class FallbackSTT(STT):
    def __init__(self, providers: Sequence[STT], *, on_switch: OnSwitch | None = None) -> None:
        self.providers = tuple(providers)
        self._on_switch = on_switch
        self.name = self.providers[0].name
        self.model = self.providers[0].model

    async def warm(self) -> None:
        for p in self.providers:
            await p.warm()

    async def connect(self) -> STTSession:
        # Only the first provider's session is opened now (pre-warmed); a fallback's is opened
        # when it is first needed, while the failed utterance's audio waits in memory.
        return _FallbackSession(self.providers, await self.providers[0].connect(), self._on_switch)

    async def aclose(self) -> None:
        for p in self.providers:
            await p.aclose()


class _FallbackSession(STTSession):
    def __init__(self, providers: tuple[STT, ...], first: STTSession, on_switch: OnSwitch | None) -> None:
        self._providers = providers
        self._sessions: dict[int, STTSession] = {0: first}
        self.chain = _Chain("stt", [p.name for p in providers], on_switch=on_switch)

    async def session(self, index: int) -> STTSession:
        if index not in self._sessions:
            self._sessions[index] = await self._providers[index].connect()
        return self._sessions[index]

    def begin(self, on_interim: InterimCallback | None = None) -> Utterance:
        index = self.chain.current
        return _FallbackUtterance(self, index, self._sessions[index].begin(on_interim), on_interim)

    async def aclose(self) -> None:
        for s in self._sessions.values():
            await s.aclose()


class _FallbackUtterance(Utterance):
    """Keeps every frame until the transcript is final, to replay it into the next provider."""

    def __init__(
        self, owner: _FallbackSession, index: int, inner: Utterance, on_interim: InterimCallback | None
    ) -> None:
        self._owner = owner
        self._index = index
        self._inner = inner
        self._on_interim = on_interim
        self._frames: list[tuple[bytes, bool]] = []

    def push(self, pcm: bytes, voiced: bool) -> None:
        self._frames.append((pcm, voiced))
        self._inner.push(pcm, voiced)

    async def finalize(self) -> Transcript:
        while True:
            try:
                return replace(await self._inner.finalize(), served_by=self._index)
            except ProviderError as exc:
                self._inner.cancel()
                if not self._owner.chain.fail(self._index, exc):
                    raise
                self._index += 1
                self._inner = (await self._owner.session(self._index)).begin(self._on_interim)
                for pcm, voiced in self._frames:
                    self._inner.push(pcm, voiced)

    def cancel(self) -> None:
        self._inner.cancel()
        self._frames = []
