"""OpenAITTS through the real openai SDK against a local POST /v1/audio/speech that streams raw
24 kHz s16le PCM in chunks of awkward (odd) sizes, as a chunked HTTP body."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest
import pytest_asyncio
from aiohttp import web
from fakes.openai_api import FAST_RETRY, FakeOpenAI, Reply, serve_openai, stall, status

from pipeline import SAMPLE_RATE, ProviderError
from pipeline.providers import OpenAITTS, OpenAITTSConfig
from pipeline.providers._resilience import RetryPolicy, Timeouts

NATIVE_RATE = 24_000
AMPLITUDE = 0.5
ODD_SIZES = (1, 777, 4097, 333, 2, 1001, 9)


# An answer is due well inside PATIENT even on a machine slowed tenfold; only the tests of a
# server that never answers wait for STALLED's timeout (1 s, against a local answer of ~10 ms).
PATIENT = Timeouts(connect_s=10.0, first_byte_s=10.0, total_s=30.0)
STALLED = Timeouts(connect_s=10.0, first_byte_s=1.0, total_s=30.0)


@pytest_asyncio.fixture
async def server() -> AsyncIterator[FakeOpenAI]:
    async with serve_openai("/v1/audio/speech") as srv:
        yield srv


def tone(hz: float, seconds: float, rate: int = NATIVE_RATE) -> bytes:
    t = np.arange(round(seconds * rate)) / rate
    return (np.sin(2 * np.pi * hz * t) * AMPLITUDE * 32767).astype("<i2").tobytes()


def pieces(data: bytes, sizes: tuple[int, ...] = ODD_SIZES) -> list[bytes]:
    out, i, k = [], 0, 0
    while i < len(data):
        out.append(data[i : i + sizes[k % len(sizes)]])
        i += sizes[k % len(sizes)]
        k += 1
    return out


def pcm(data: bytes, *, drop: bool = False) -> Reply:
    """Stream data in odd-sized chunks; with drop, close the connection half-way instead."""

    async def reply(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        await resp.prepare(request)
        chunks = pieces(data)
        for chunk in chunks[: len(chunks) // 2] if drop else chunks:
            await resp.write(chunk)
        if drop:
            assert request.transport is not None
            request.transport.close()  # flushes what was written, then FIN: no terminating chunk
            return resp
        await resp.write_eof()
        return resp

    return reply


def make_tts(srv: FakeOpenAI, **config: Any) -> OpenAITTS:
    config.setdefault("retry", FAST_RETRY)
    config.setdefault("timeouts", PATIENT)
    return OpenAITTS(OpenAITTSConfig(base_url=srv.url, api_key="sk-test", **config))


async def synthesize(tts: OpenAITTS, text: str = "Hello there.") -> bytes:
    try:
        return b"".join([chunk async for chunk in tts.synthesize(text)])
    finally:
        await tts.aclose()


def peak_hz(samples: np.ndarray[Any, Any], rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples.astype(np.float64) * np.hanning(len(samples))))
    return float(np.fft.rfftfreq(len(samples), 1 / rate)[int(np.argmax(spectrum))])


# -- audio -------------------------------------------------------------------------------------


async def test_odd_chunks_come_out_as_16khz_int16_of_the_same_duration_and_pitch(server: FakeOpenAI) -> None:
    server.script(pcm(tone(440, 1.0)))

    out = np.frombuffer(await synthesize(make_tts(server)), "<i2")

    assert abs(len(out) - SAMPLE_RATE) <= 2  # 1 s at 16 kHz
    assert abs(peak_hz(out, SAMPLE_RATE) - 440) <= 1
    # No clicks at chunk edges: a 440 Hz sine moves at most A*2*pi*440/16000 per sample.
    body = out[200:-200].astype(np.float64) / 32767
    assert np.max(np.abs(np.diff(body))) < AMPLITUDE * 2 * np.pi * 440 / SAMPLE_RATE * 1.05
    assert np.max(np.abs(body)) == pytest.approx(AMPLITUDE, abs=0.02)


async def test_the_request_asks_for_raw_pcm_with_the_configured_voice(server: FakeOpenAI) -> None:
    server.script(pcm(tone(440, 0.1)))

    await synthesize(
        make_tts(server, model="tts-test", voice="coral", speed=1.25, instructions="Speak warmly."),
        "Your table is booked.",
    )

    assert server.bodies == [
        {
            "model": "tts-test",
            "voice": "coral",
            "input": "Your table is booked.",
            "response_format": "pcm",
            "speed": 1.25,
            "instructions": "Speak warmly.",
        }
    ]


async def test_defaults_send_only_the_required_fields(server: FakeOpenAI) -> None:
    server.script(pcm(tone(440, 0.1)))

    await synthesize(make_tts(server), "Hi.")

    assert server.bodies == [
        {"model": "gpt-4o-mini-tts", "voice": "alloy", "input": "Hi.", "response_format": "pcm"}
    ]


async def test_blank_text_makes_no_request(server: FakeOpenAI) -> None:
    assert await synthesize(make_tts(server), "  ") == b""
    assert server.bodies == []


# -- failures ----------------------------------------------------------------------------------


async def test_a_server_error_is_retried(server: FakeOpenAI) -> None:
    server.script(status(503, "Service unavailable"), pcm(tone(440, 0.2)))

    out = await synthesize(make_tts(server))

    assert abs(len(out) // 2 - 0.2 * SAMPLE_RATE) <= 2
    assert len(server.bodies) == 2


async def test_a_rejected_key_is_not_retried_and_says_why(server: FakeOpenAI) -> None:
    server.script(status(401, "Incorrect API key provided: sk-test."))

    with pytest.raises(ProviderError) as err:
        await synthesize(make_tts(server))

    assert str(err.value) == "openai returned 401: Incorrect API key provided: sk-test."
    assert err.value.provider == "openai" and not err.value.retryable
    assert len(server.bodies) == 1


async def test_a_slow_first_byte_times_out_and_the_retry_succeeds(server: FakeOpenAI) -> None:
    server.script(stall(server), pcm(tone(440, 0.2)))

    out = await synthesize(make_tts(server, timeouts=STALLED))

    assert abs(len(out) // 2 - 0.2 * SAMPLE_RATE) <= 2
    assert len(server.bodies) == 2


async def test_a_connection_dropped_mid_audio_fails_without_repeating_audio(server: FakeOpenAI) -> None:
    server.script(pcm(tone(440, 0.5), drop=True), pcm(tone(440, 0.5)))
    got: list[bytes] = []
    tts = make_tts(server)

    with pytest.raises(ProviderError, match="openai: connection failed: RemoteProtocolError") as err:
        async for chunk in tts.synthesize("Hello there."):
            got.append(chunk)
    await tts.aclose()

    assert got  # some audio was played before the drop
    assert err.value.provider == "openai"
    assert len(server.bodies) == 1


async def test_a_json_body_instead_of_audio_is_an_error(server: FakeOpenAI) -> None:
    async def json_ok(request: web.Request) -> web.StreamResponse:
        return web.json_response({"unexpected": True})

    server.script(json_ok)

    with pytest.raises(
        ProviderError, match="openai speech returned 'application/json; charset=utf-8', not audio"
    ):
        await synthesize(make_tts(server))


async def test_an_empty_body_for_words_is_a_retryable_error_not_silence(server: FakeOpenAI) -> None:
    server.script(pcm(b""), pcm(b""), pcm(b""))

    with pytest.raises(ProviderError, match="openai: the response had no audio for 12 characters") as err:
        await synthesize(make_tts(server), "Hello there.")

    assert err.value.retryable and len(server.bodies) == 3


# -- configuration -----------------------------------------------------------------------------


def test_a_missing_key_fails_at_construction_naming_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)

    with pytest.raises(ProviderError, match="set OPENAI_API_KEY"):
        OpenAITTS(OpenAITTSConfig(base_url="http://127.0.0.1:9/v1"))


def test_from_options() -> None:
    config = OpenAITTSConfig.from_options(
        "tts-1", {"voice": "nova", "speed": 1.1, "timeouts": {"first_byte_s": 1.5}, "retry": {"attempts": 1}}
    )

    assert config == OpenAITTSConfig(
        model="tts-1",
        voice="nova",
        speed=1.1,
        timeouts=Timeouts(first_byte_s=1.5),
        retry=RetryPolicy(attempts=1),
    )
    assert OpenAITTSConfig.from_options(None, {}) == OpenAITTSConfig()
    with pytest.raises(ValueError, match=r"openai tts: unknown option\(s\) 'format'"):
        OpenAITTSConfig.from_options(None, {"format": "mp3"})
    with pytest.raises(ValueError, match=r"openai tts speed must be 0\.25-4\.0, got 9"):
        OpenAITTSConfig.from_options(None, {"speed": 9})
