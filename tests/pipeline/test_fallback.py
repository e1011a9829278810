"""Fallback chains: a failing provider hands its work to the next one, and the switch sticks."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

import pytest

from pipeline import (
    LLM,
    STT,
    TTS,
    LLMEvent,
    LLMUsage,
    Message,
    ProviderError,
    STTSession,
    TextDelta,
    ToolSpec,
    Transcript,
)
from pipeline.providers.fallback import FallbackLLM, FallbackSTT, FallbackTTS
from pipeline.testing import ScriptedSTT


class TTSDouble(TTS):
    def __init__(self, name: str, fail_after: int | None = None) -> None:
        self.name = self.model = name
        self.fail_after = fail_after  # chunks before failing; None never fails
        self.texts: list[str] = []

    async def synthesize(self, text: str) -> AsyncIterator[bytes]:
        self.texts.append(text)
        for i in range(3):
            if self.fail_after is not None and i == self.fail_after:
                raise ProviderError(f"{self.name}: 503", provider=self.name, retryable=True)
            yield f"{self.name}:{text}:{i}|".encode()


async def speak(tts: TTS, text: str) -> str:
    return b"".join([c async for c in tts.synthesize(text)]).decode()


async def test_tts_failure_before_audio_moves_to_the_next_provider_and_stays() -> None:
    polly, openai = TTSDouble("polly", fail_after=0), TTSDouble("openai")
    tts = FallbackTTS([polly, openai])
    assert await speak(tts, "Hi.") == "openai:Hi.:0|openai:Hi.:1|openai:Hi.:2|"
    assert await speak(tts, "Again.") == "openai:Again.:0|openai:Again.:1|openai:Again.:2|"
    assert polly.texts == ["Hi."] and tts.switches == 1


async def test_tts_failure_mid_segment_says_the_whole_segment_again_on_the_next() -> None:
    tts = FallbackTTS([TTSDouble("polly", fail_after=1), TTSDouble("local")])
    assert await speak(tts, "Hi.") == "polly:Hi.:0|local:Hi.:0|local:Hi.:1|local:Hi.:2|"


async def test_the_last_provider_failing_raises() -> None:
    tts = FallbackTTS([TTSDouble("a", fail_after=0), TTSDouble("b", fail_after=0)])
    with pytest.raises(ProviderError, match="b: 503"):
        await speak(tts, "x")


class LLMDouble(LLM):
    def __init__(self, name: str, fail_at: int | None) -> None:
        self.name = self.model = name
        self.fail_at = fail_at
        self.calls = 0

    async def chat(
        self, messages: Sequence[Message], tools: Sequence[ToolSpec] = ()
    ) -> AsyncIterator[LLMEvent]:
        self.calls += 1
        for i, word in enumerate(["one ", "two"]):
            if i == self.fail_at:
                raise ProviderError(f"{self.name}: timeout", provider=self.name, retryable=True)
            yield TextDelta(text=f"{self.name} {word}")


async def reply(llm: LLM) -> str:
    return "".join(
        ev.text for ev in [e async for e in llm.chat([Message("user", "hi")])] if isinstance(ev, TextDelta)
    )


async def test_llm_failure_before_the_first_token_retries_the_request_on_the_next() -> None:
    llm = FallbackLLM([LLMDouble("openai", fail_at=0), LLMDouble("local", fail_at=None)])
    assert await reply(llm) == "local one local two"
    assert llm.switches == 1


async def test_llm_failure_mid_reply_ends_that_reply_and_switches_for_the_next_turn() -> None:
    first, second = LLMDouble("openai", fail_at=1), LLMDouble("local", fail_at=None)
    llm = FallbackLLM([first, second])
    with pytest.raises(ProviderError):
        await reply(llm)  # "openai one" was already spoken: it is not said again by another model
    assert await reply(llm) == "local one local two"
    assert first.calls == 1


class BrokenSTT(STT):
    name = model = "deepgram"

    async def connect(self) -> STTSession:
        class Session(STTSession):
            def begin(self, on_interim=None):  # type: ignore[no-untyped-def]
                class U:
                    def push(self, pcm: bytes, voiced: bool) -> None: ...
                    async def finalize(self) -> Transcript:
                        raise ProviderError("deepgram: socket closed", provider="deepgram", retryable=True)

                    def cancel(self) -> None: ...

                return U()

        return Session()


async def test_stt_failure_replays_the_utterance_into_the_next_provider() -> None:
    heard: list[int] = []

    class CountingSTT(ScriptedSTT):
        async def connect(self) -> STTSession:
            inner = await super().connect()

            class Session(STTSession):
                def begin(self, on_interim=None):  # type: ignore[no-untyped-def]
                    u = inner.begin(on_interim)
                    push = u.push

                    def counted(pcm: bytes, voiced: bool) -> None:
                        heard.append(len(pcm))
                        push(pcm, voiced)

                    u.push = counted  # type: ignore[method-assign]
                    return u

            return Session()

    session = await FallbackSTT([BrokenSTT(), CountingSTT(["book a table", "for two"])]).connect()
    first = session.begin()
    for _ in range(10):
        first.push(b"\0" * 640, True)
    assert (await first.finalize()).text == "book a table"
    assert heard == [640] * 10  # every frame reached the fallback
    second = session.begin()  # the switch sticks: the next utterance goes straight to it
    second.push(b"\0" * 640, True)
    assert (await second.finalize()).text == "for two"
    await session.aclose()


async def test_after_recover_after_s_the_first_provider_is_tried_again() -> None:
    polly, openai = TTSDouble("polly", fail_after=0), TTSDouble("openai")
    tts = FallbackTTS(
        [polly, openai], recover_after_s=0.0
    )  # recover at once: a worker must not stay switched
    assert (await speak(tts, "Hi.")).startswith("openai:")
    polly.fail_after = None  # the outage is over
    assert (await speak(tts, "Again.")).startswith("polly:")
    assert tts.switches == 1


async def test_each_switch_is_reported_with_its_stage() -> None:
    # The worker counts these in voicerun_provider_fallbacks_total{stage}.
    switched: list[str] = []
    tts = FallbackTTS([TTSDouble("polly", fail_after=0), TTSDouble("openai")], on_switch=switched.append)
    await speak(tts, "Hi.")
    await speak(tts, "Again.")  # the switch sticks: not reported twice
    session = await FallbackSTT([BrokenSTT(), ScriptedSTT(["hello"])], on_switch=switched.append).connect()
    utt = session.begin()
    utt.push(b"\0" * 640, True)
    assert (await utt.finalize()).text == "hello"
    await session.aclose()
    assert switched == ["tts", "stt"]


async def test_usage_names_the_provider_of_the_chain_that_served_it() -> None:
    # Billing prices each utterance, completion and segment by the provider that did it.
    polly = TTSDouble("polly", fail_after=0)
    tts = FallbackTTS([polly, TTSDouble("openai")], recover_after_s=0)
    first = tts.synthesis("Hi.")
    assert [pcm async for pcm in first] and first.served_by == 1
    # The chain recovers (recover_after_s=0): the next request is the first provider's again,
    # and the earlier request still names the one that served it.
    polly.fail_after = None
    second = tts.synthesis("Again.")
    assert [pcm async for pcm in second] and second.served_by == 0
    assert first.served_by == 1

    class UsageLLM(LLMDouble):
        async def chat(
            self, messages: Sequence[Message], tools: Sequence[ToolSpec] = ()
        ) -> AsyncIterator[LLMEvent]:
            async for ev in super().chat(messages, tools):
                yield ev
            yield LLMUsage(prompt_tokens=10, completion_tokens=2)

    llm = FallbackLLM([UsageLLM("openai", fail_at=0), UsageLLM("local", fail_at=None)])
    usage = [ev for ev in [e async for e in llm.chat([Message("user", "hi")])] if isinstance(ev, LLMUsage)]
    assert usage == [LLMUsage(prompt_tokens=10, completion_tokens=2, served_by=1)]

    session = await FallbackSTT([BrokenSTT(), ScriptedSTT(["hello"])]).connect()
    utt = session.begin()
    utt.push(b"\0" * 640, True)
    assert (await utt.finalize()).served_by == 1
    await session.aclose()
    plain = (await ScriptedSTT(["hi"]).connect()).begin()
    assert (await plain.finalize()).served_by == 0
