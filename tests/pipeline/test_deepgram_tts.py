"""DeepgramTTS against a local Deepgram /v1/speak websocket speaking Deepgram's message JSON."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import pytest_asyncio
from aiohttp import WSMsgType, web

from pipeline import ProviderError
from pipeline.providers._resilience import RetryPolicy, Timeouts
from pipeline.providers.deepgram_tts import DeepgramTTS, DeepgramTTSConfig

API_KEY = "test-key"
FAST = RetryPolicy(attempts=3, backoff_s=0.001, backoff_max_s=0.002)


@dataclass
class FakeSpeak:
    url: str = ""
    audio: list[bytes] = field(default_factory=lambda: [b"\x01\x00" * 400, b"\x02\x00\x03", b"\x00" * 3])
    """Chunks sent before Flushed (the middle ones split a sample)."""
    reject_statuses: list[int] = field(default_factory=list)
    warning: str | None = None
    drop_before_audio: int = 0
    """Connections to close before any audio."""
    attempts: int = 0
    queries: list[dict[str, str]] = field(default_factory=list)
    texts: list[dict[str, Any]] = field(default_factory=list)

    async def speak(self, request: web.Request) -> web.StreamResponse:
        self.attempts += 1
        if self.reject_statuses:
            return web.Response(status=self.reject_statuses.pop(0))
        if request.headers.get("Authorization") != f"Token {API_KEY}":
            return web.Response(status=401)
        self.queries.append(dict(request.query))
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for msg in ws:
            if msg.type != WSMsgType.TEXT:
                continue
            data = json.loads(msg.data)
            self.texts.append(data)
            if data["type"] == "Flush":
                if self.drop_before_audio:
                    self.drop_before_audio -= 1
                    await ws.close(code=1011)
                    break
                if self.warning is not None:
                    await ws.send_str(
                        json.dumps({"type": "Warning", "description": self.warning, "code": "W1"})
                    )
                    continue
                await ws.send_str(json.dumps({"type": "Metadata", "request_id": "r", "model_name": "m"}))
                for chunk in self.audio:
                    await ws.send_bytes(chunk)
                await ws.send_str(json.dumps({"type": "Flushed", "sequence_id": 0}))
            elif data["type"] == "Close":
                await ws.close()
        return ws


@pytest_asyncio.fixture
async def fake() -> AsyncIterator[FakeSpeak]:
    server = FakeSpeak()
    app = web.Application()
    app.router.add_get("/v1/speak", server.speak)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server.url = f"ws://127.0.0.1:{runner.addresses[0][1]}"
    try:
        yield server
    finally:
        await runner.cleanup()


def tts(fake: FakeSpeak, **overrides: Any) -> DeepgramTTS:
    base: dict[str, Any] = {"api_key": API_KEY, "base_url": fake.url, "retry": FAST}
    base.update(overrides)
    return DeepgramTTS(DeepgramTTSConfig(**base))


async def collect(stream: AsyncIterator[bytes]) -> list[bytes]:
    return [chunk async for chunk in stream]


async def test_audio_streams_back_in_whole_samples(fake: FakeSpeak) -> None:
    chunks = await collect(tts(fake).synthesize("Hello there."))
    assert b"".join(chunks) == b"".join(fake.audio)
    assert all(len(c) % 2 == 0 for c in chunks)
    assert fake.queries == [{"model": "aura-2-thalia-en", "encoding": "linear16", "sample_rate": "16000"}]
    assert [t["type"] for t in fake.texts] == ["Speak", "Flush", "Close"]
    assert fake.texts[0]["text"] == "Hello there."


async def test_a_drop_before_audio_is_retried(fake: FakeSpeak) -> None:
    fake.drop_before_audio = 1
    chunks = await collect(tts(fake).synthesize("Hi."))
    assert b"".join(chunks) == b"".join(fake.audio) and fake.attempts == 2


async def test_a_warning_is_a_provider_error(fake: FakeSpeak) -> None:
    fake.warning = "text too long"
    with pytest.raises(ProviderError, match="deepgram speak warning W1: text too long"):
        await collect(tts(fake).synthesize("Hi."))
    assert fake.attempts == 1


async def test_a_rejected_key_is_not_retried(fake: FakeSpeak) -> None:
    with pytest.raises(ProviderError, match=r"rejected the API key \(HTTP 401\)") as err:
        await collect(tts(fake, api_key="wrong").synthesize("Hi."))
    assert not err.value.retryable and fake.attempts == 1


async def test_transient_refusals_exhaust_the_retries(fake: FakeSpeak) -> None:
    fake.reject_statuses = [503, 503, 503]
    with pytest.raises(ProviderError, match="HTTP 503"):
        await collect(tts(fake, timeouts=Timeouts(first_byte_s=1.0)).synthesize("Hi."))
    assert fake.attempts == 3


def test_from_options_rejects_unknown_keys() -> None:
    made = DeepgramTTS(DeepgramTTSConfig.from_options("aura-2-andromeda-en", {"api_key": "k"}))
    assert made.model == "aura-2-andromeda-en"
    with pytest.raises(ValueError, match=r"deepgram tts: unknown option\(s\)"):
        DeepgramTTSConfig.from_options(None, {"api_key": "k", "voice": "x"})
