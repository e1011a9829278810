"""DeepgramTTS through the real deepgram SDK against a local Deepgram POST /v1/speak that streams
linear16 audio as a chunked body, answers errors as Deepgram does, and records connections."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import pytest_asyncio
from aiohttp import web

from pipeline import ProviderError
from pipeline.providers._resilience import RetryPolicy, Timeouts
from pipeline.providers.deepgram_tts import DeepgramTTS, DeepgramTTSConfig

API_KEY = "test-key"
FAST = RetryPolicy(attempts=3, backoff_s=0.001, backoff_max_s=0.002)


@dataclass
class FakeSpeak:
    url: str = ""
    audio: list[bytes] = field(default_factory=lambda: [b"\x01\x00" * 400, b"\x02\x00\x03", b"\x00" * 3])
    """Chunks of the body (the middle ones split a sample)."""
    reject_statuses: list[int] = field(default_factory=list)
    error_400: str | None = None
    """Answer 400 with this err_msg, as Deepgram does for text it cannot speak."""
    drop_before_audio: int = 0
    """Requests whose connection is closed before any audio."""
    drop_after_audio: bool = False
    content_type: str = "audio/l16"
    attempts: int = 0
    queries: list[dict[str, str]] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    peers: list[int] = field(default_factory=list)
    """The client port of each request: one per TCP connection."""

    async def speak(self, request: web.Request) -> web.StreamResponse:
        self.attempts += 1
        assert request.transport is not None
        self.peers.append(request.transport.get_extra_info("peername")[1])
        if self.reject_statuses:
            return web.Response(status=self.reject_statuses.pop(0))
        if request.headers.get("Authorization") != f"Token {API_KEY}":
            return web.json_response(
                {"err_code": "INVALID_AUTH", "err_msg": "Invalid credentials."}, status=401
            )
        self.queries.append(dict(request.query))
        body = await request.json()
        self.texts.append(body["text"])
        if self.error_400 is not None:
            return web.json_response(
                {"err_code": "INVALID_QUERY_PARAMETER", "err_msg": self.error_400, "request_id": "r"},
                status=400,
            )
        if self.drop_before_audio:
            self.drop_before_audio -= 1
            request.transport.close()
            return web.Response()
        resp = web.StreamResponse(headers={"Content-Type": self.content_type})
        await resp.prepare(request)
        for i, chunk in enumerate(self.audio):
            await resp.write(chunk)
            if self.drop_after_audio and i == 0:
                request.transport.close()
                return resp
        await resp.write_eof()
        return resp


@pytest_asyncio.fixture
async def fake() -> AsyncIterator[FakeSpeak]:
    server = FakeSpeak()
    app = web.Application()
    app.router.add_post("/v1/speak", server.speak)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        yield server
    finally:
        await runner.cleanup()


def tts(fake: FakeSpeak, **overrides: Any) -> DeepgramTTS:
    base: dict[str, Any] = {"api_key": API_KEY, "base_url": fake.url, "retry": FAST}
    base.update(overrides)
    return DeepgramTTS(DeepgramTTSConfig(**base))


async def collect(engine: DeepgramTTS, text: str = "Hello there.") -> list[bytes]:
    return [chunk async for chunk in engine.synthesize(text)]


async def test_audio_streams_back_in_whole_samples(fake: FakeSpeak) -> None:
    engine = tts(fake)
    chunks = await collect(engine)
    await engine.aclose()
    assert b"".join(chunks) == b"".join(fake.audio)
    assert all(len(c) % 2 == 0 for c in chunks)
    assert fake.queries == [
        {"model": "aura-2-thalia-en", "encoding": "linear16", "sample_rate": "16000", "container": "none"}
    ]
    assert fake.texts == ["Hello there."]


async def test_segments_and_turns_reuse_one_connection(fake: FakeSpeak) -> None:
    # A websocket per segment paid TCP, TLS and the upgrade every sentence.
    engine = tts(fake)
    for text in ("First sentence.", "Second one.", "And a third."):
        assert b"".join(await collect(engine, text)) == b"".join(fake.audio)
    await engine.aclose()
    assert len(fake.peers) == 3 and len(set(fake.peers)) == 1


async def test_a_ws_origin_is_accepted_too(fake: FakeSpeak) -> None:
    engine = tts(fake, base_url=fake.url.replace("http://", "ws://"))
    assert b"".join(await collect(engine)) == b"".join(fake.audio)
    await engine.aclose()


async def test_a_drop_before_audio_is_retried(fake: FakeSpeak) -> None:
    fake.drop_before_audio = 1
    engine = tts(fake)
    chunks = await collect(engine, "Hi.")
    await engine.aclose()
    assert b"".join(chunks) == b"".join(fake.audio) and fake.attempts == 2


async def test_a_drop_after_audio_is_an_error_not_a_repeat(fake: FakeSpeak) -> None:
    fake.drop_after_audio = True
    engine = tts(fake)
    with pytest.raises(ProviderError, match="deepgram speak stopped mid-stream"):
        await collect(engine, "Hi.")
    await engine.aclose()
    assert fake.attempts == 1  # the caller may have heard the start: never said twice


async def test_deepgrams_own_error_message_is_kept_and_not_retried(fake: FakeSpeak) -> None:
    fake.error_400 = "Text too long."
    engine = tts(fake)
    with pytest.raises(ProviderError, match=r"HTTP 400\): Text too long\.") as err:
        await collect(engine, "Hi.")
    await engine.aclose()
    assert not err.value.retryable and fake.attempts == 1


async def test_a_rejected_key_is_not_retried(fake: FakeSpeak) -> None:
    engine = tts(fake, api_key="wrong")
    with pytest.raises(ProviderError, match=r"rejected the API key \(HTTP 401\)") as err:
        await collect(engine, "Hi.")
    await engine.aclose()
    assert not err.value.retryable and fake.attempts == 1
    assert "wrong" not in str(err.value)


async def test_transient_refusals_exhaust_the_retries(fake: FakeSpeak) -> None:
    fake.reject_statuses = [503, 503, 503]
    engine = tts(fake, timeouts=Timeouts(first_byte_s=1.0))
    with pytest.raises(ProviderError, match="HTTP 503"):
        await collect(engine, "Hi.")
    await engine.aclose()
    assert fake.attempts == 3


async def test_blank_text_sends_nothing(fake: FakeSpeak) -> None:
    engine = tts(fake)
    assert await collect(engine, "   ") == []
    await engine.aclose()
    assert fake.attempts == 0


def test_from_options_rejects_unknown_keys() -> None:
    made = DeepgramTTS(DeepgramTTSConfig.from_options("aura-2-andromeda-en", {"api_key": "k"}))
    assert made.model == "aura-2-andromeda-en"
    with pytest.raises(ValueError, match=r"deepgram tts: unknown option\(s\)"):
        DeepgramTTSConfig.from_options(None, {"api_key": "k", "voice": "x"})


async def test_an_empty_body_for_words_is_a_retryable_error_not_silence(fake: FakeSpeak) -> None:
    fake.audio = []
    engine = tts(fake)
    with pytest.raises(ProviderError, match="deepgram: the response had no audio for 12 characters") as err:
        await collect(engine, "Hello there.")
    assert err.value.retryable and fake.attempts == 3
    assert await collect(engine, "...") == []  # nothing to say: silence is the right answer
    await engine.aclose()


async def test_a_json_body_with_status_200_is_an_error_not_noise(fake: FakeSpeak) -> None:
    fake.content_type = "application/json"
    fake.audio = [b'{"message": "this is not the speak endpoint"}']
    engine = tts(fake)
    with pytest.raises(
        ProviderError,
        match=re.escape("""deepgram speak returned 'application/json', not audio: b'{"message"""),
    ):
        await collect(engine)
    await engine.aclose()
    assert fake.attempts == 1
