"""PollyTTS through the real boto3 client against a local server that speaks Polly's REST protocol.

The fake follows botocore's service model (polly/2016-06-10): `POST /v1/speech` with a JSON body,
the audio as the response body (Content-Type audio/pcm, x-amzn-RequestCharacters), and errors as
an HTTP status with x-amzn-ErrorType and `{"__type", "message"}`. It runs on the test's own event
loop, so an implementation that blocked the loop could not even be answered.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
from aiohttp import web

from pipeline import ProviderError
from pipeline.providers import PollyConfig, PollyTTS
from pipeline.providers._resilience import RetryPolicy, Timeouts

FAST = RetryPolicy(attempts=3, backoff_s=0.001, backoff_max_s=0.002)
ONCE = RetryPolicy(attempts=1)
ODD_SIZES = (1, 333, 4095, 7, 2049, 1001)
"""Body pieces the fake writes: odd sizes split samples between network chunks."""


def tone_pcm(seconds: float) -> bytes:
    t = np.arange(int(16_000 * seconds)) / 16_000
    return (np.sin(2 * np.pi * 220 * t) * 8000).astype("<i2").tobytes()


PCM = tone_pcm(0.5)  # 16000 bytes


Handler = Callable[[web.Request, "FakePolly"], Awaitable[web.StreamResponse]]


@dataclass
class FakePolly:
    """Polly's SynthesizeSpeech on 127.0.0.1; each request takes the next scripted handler."""

    url: str = ""
    bodies: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    script: list[Handler] = field(default_factory=list)
    disconnected: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.bodies.append(json.loads(await request.read()))
        self.headers.append(dict(request.headers))
        handler = self.script.pop(0) if self.script else audio()
        try:
            return await handler(request, self)
        except asyncio.CancelledError:
            # aiohttp cancels a handler when its client goes away (handler_cancellation).
            self.disconnected.set()
            raise


def audio(pcm: bytes = PCM, sizes: tuple[int, ...] = ODD_SIZES, content_type: str = "audio/pcm") -> Handler:
    """A successful response, the PCM written in pieces of `sizes` (cycled), chunked like Polly's."""

    async def handler(request: web.Request, fake: FakePolly) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={"x-amzn-RequestCharacters": str(len(fake.bodies[-1]["Text"])), "x-amzn-RequestId": "r-1"}
        )
        response.content_type = content_type
        response.enable_chunked_encoding()
        await response.prepare(request)
        offset, piece = 0, 0
        while offset < len(pcm):
            size = sizes[piece % len(sizes)]
            await response.write(pcm[offset : offset + size])
            offset, piece = offset + size, piece + 1
        await response.write_eof()
        return response

    return handler


def error(status: int, code: str, message: str) -> Handler:
    async def handler(request: web.Request, fake: FakePolly) -> web.StreamResponse:
        return web.json_response(
            {"__type": code, "message": message},
            status=status,
            headers={"x-amzn-ErrorType": f"{code}:http://internal.amazon.com/coral/com.amazonaws.polly/"},
        )

    return handler


def stall(never: asyncio.Event) -> Handler:
    """Accepts the request and never answers."""

    async def handler(request: web.Request, fake: FakePolly) -> web.StreamResponse:
        await never.wait()
        raise AssertionError("the event is never set")

    return handler


def drop_after(sent: int, *, chunked: bool, pcm: bytes = PCM) -> Handler:
    """Sends `sent` bytes of pcm (chunked, or with all of it announced), then closes the connection."""

    async def handler(request: web.Request, fake: FakePolly) -> web.StreamResponse:
        response = web.StreamResponse()
        response.content_type = "audio/pcm"
        if chunked:
            response.enable_chunked_encoding()
        else:
            response.content_length = len(pcm)
        await response.prepare(request)
        await response.write(pcm[:sent])
        assert request.transport is not None
        request.transport.close()  # flushes what was written, then FIN: the body ends short
        return response

    return handler


def first_then_wait(never: asyncio.Event, pcm: bytes = PCM) -> Handler:
    """Sends part of the audio, then holds the stream open until the client leaves."""

    async def handler(request: web.Request, fake: FakePolly) -> web.StreamResponse:
        response = web.StreamResponse()
        response.content_type = "audio/pcm"
        response.enable_chunked_encoding()
        await response.prepare(request)
        await response.write(pcm[:8000])
        await never.wait()
        raise AssertionError("the event is never set")

    return handler


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Dummy credentials in the environment, and nothing else of the machine's AWS set-up."""
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION", "HTTP_PROXY", "HTTPS_PROXY",
                 "http_proxy", "https_proxy"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDTESTING")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing-secret")
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


@pytest.fixture
async def polly(aws_env: None) -> AsyncIterator[FakePolly]:
    fake = FakePolly()
    app = web.Application()
    app.router.add_post("/v1/speech", fake.handle)
    runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    fake.url = f"http://{host}:{port}"
    try:
        yield fake
    finally:
        await runner.cleanup()


def make_tts(fake: FakePolly, **config: Any) -> PollyTTS:
    config.setdefault("retry", FAST)
    return PollyTTS(PollyConfig(endpoint_url=fake.url, **config))


async def collect(tts: PollyTTS, text: str) -> list[bytes]:
    try:
        return [chunk async for chunk in tts.synthesize(text)]
    finally:
        await tts.aclose()


async def test_streams_polly_pcm_as_whole_16khz_samples(
    polly: FakePolly, captured_logs: list[MutableMapping[str, Any]]
) -> None:
    chunks = await collect(make_tts(polly), "Your table is booked.")

    assert b"".join(chunks) == PCM
    assert all(len(c) % 2 == 0 and c for c in chunks)
    [body] = polly.bodies
    assert body == {
        "Text": "Your table is booked.",
        "TextType": "text",
        "OutputFormat": "pcm",
        "SampleRate": "16000",  # a string in Polly's model
        "VoiceId": "Joanna",
        "Engine": "neural",
    }
    # Signed with the environment's credentials for the environment's region.
    assert "Credential=AKIDTESTING/" in polly.headers[0]["Authorization"]
    assert "/eu-west-1/polly/aws4_request" in polly.headers[0]["Authorization"]
    done = [e for e in captured_logs if e["event"] == "tts_done"]
    assert [e["event"] for e in captured_logs if e["event"].startswith("tts_")] == ["tts_request", "tts_done"]
    assert done[0]["voice"] == "Joanna" and done[0]["engine"] == "neural"
    assert done[0]["characters"] == 21 and done[0]["billed_characters"] == 21
    assert isinstance(done[0]["ttfb_ms"], int) and done[0]["audio_ms"] == 500


async def test_voice_engine_and_language_are_sent_as_configured(polly: FakePolly) -> None:
    tts = make_tts(polly, voice="Aditi", engine="standard", language_code="hi-IN")
    assert tts.model == "standard"

    await collect(tts, "Namaste")

    assert polly.bodies[0]["VoiceId"] == "Aditi"
    assert polly.bodies[0]["Engine"] == "standard"
    assert polly.bodies[0]["LanguageCode"] == "hi-IN"


async def test_ssml_mode_escapes_plain_text_and_passes_speak_documents(polly: FakePolly) -> None:
    tts = make_tts(polly, ssml=True)
    await collect(tts, "Fish & chips for <two>")
    await collect(tts, '<speak>Hold on<break time="300ms"/> please.</speak>')

    assert [b["TextType"] for b in polly.bodies] == ["ssml", "ssml"]
    assert polly.bodies[0]["Text"] == "<speak>Fish &amp; chips for &lt;two&gt;</speak>"
    assert polly.bodies[1]["Text"] == '<speak>Hold on<break time="300ms"/> please.</speak>'


async def test_plain_mode_sends_markup_as_text(polly: FakePolly) -> None:
    await collect(make_tts(polly), "<speak>not ssml</speak>")
    assert polly.bodies[0]["TextType"] == "text"
    assert polly.bodies[0]["Text"] == "<speak>not ssml</speak>"


async def test_throttling_is_retried_once_more_by_our_policy(polly: FakePolly) -> None:
    polly.script = [error(400, "ThrottlingException", "Rate exceeded"), audio()]

    chunks = await collect(make_tts(polly), "Hello there.")

    assert b"".join(chunks) == PCM
    assert len(polly.bodies) == 2  # botocore did not retry on its own


async def test_throttling_until_the_policy_is_spent_is_a_retryable_error(polly: FakePolly) -> None:
    polly.script = [error(400, "ThrottlingException", "Rate exceeded")] * 3

    with pytest.raises(ProviderError, match="ThrottlingException: Rate exceeded") as info:
        await collect(make_tts(polly, retry=RetryPolicy(attempts=2, backoff_s=0.001)), "Hello there.")

    assert info.value.retryable and info.value.provider == "polly"
    assert len(polly.bodies) == 2


async def test_invalid_ssml_fails_at_once_with_polly_code_and_message(polly: FakePolly) -> None:
    polly.script = [error(400, "InvalidSsmlException", "Invalid SSML request")]

    with pytest.raises(ProviderError) as info:
        await collect(make_tts(polly, ssml=True), "<speak><prosody>unclosed</speak>")

    assert not info.value.retryable
    assert "400 InvalidSsmlException: Invalid SSML request" in str(info.value)
    assert "voice Joanna" in str(info.value)
    assert len(polly.bodies) == 1  # FAST allows three attempts: none was spent on it


@pytest.mark.parametrize(
    ("status", "code", "retryable"),
    [
        (400, "ThrottlingException", True),
        (500, "ServiceFailureException", True),
        (503, "ServiceUnavailableException", True),
        (400, "TextLengthExceededException", False),
        (400, "EngineNotSupportedException", False),
        (403, "AccessDeniedException", False),
        (403, "UnrecognizedClientException", False),
    ],
)
async def test_errors_are_classified_by_code_and_status(
    polly: FakePolly, status: int, code: str, retryable: bool
) -> None:
    polly.script = [error(status, code, "scripted failure")]

    with pytest.raises(ProviderError, match=f"{status} {code}: scripted failure") as info:
        await collect(make_tts(polly, retry=ONCE), "Hi.")

    assert info.value.retryable is retryable
    if code in ("AccessDeniedException", "UnrecognizedClientException"):
        assert "check the AWS credentials" in str(info.value)


async def test_a_slow_first_byte_fails_after_first_byte_s(polly: FakePolly) -> None:
    never = asyncio.Event()
    polly.script = [stall(never)]
    tts = make_tts(polly, timeouts=Timeouts(first_byte_s=0.3), retry=ONCE)

    with pytest.raises(ProviderError, match=r"polly: no response within 0\.3 s") as info:
        await collect(tts, "Hello?")

    assert info.value.retryable  # a fallback provider or a later turn may try again


async def test_the_event_loop_keeps_running_while_polly_is_in_flight(polly: FakePolly) -> None:
    ticks = 0
    ticked = asyncio.Condition()

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.001)  # the ticker's period, not a wait for something
            async with ticked:
                ticks += 1
                ticked.notify_all()

    async def ticks_pass(n: int) -> None:
        target = ticks + n
        async with ticked:
            await ticked.wait_for(lambda: ticks >= target)

    async def gated(request: web.Request, fake: FakePolly) -> web.StreamResponse:
        # Answers only after the ticker has run on, before the headers and before every piece: a
        # synthesize_speech call or a read that blocked the loop would stall the ticker, so this
        # server could never answer, and the request would time out.
        await ticks_pass(3)
        response = web.StreamResponse()
        response.content_type = "audio/pcm"
        response.enable_chunked_encoding()
        await response.prepare(request)
        for offset in range(0, len(PCM), 4001):
            await ticks_pass(2)
            await response.write(PCM[offset : offset + 4001])
        await response.write_eof()
        return response

    polly.script = [gated]
    async with asyncio.TaskGroup() as group:
        ticking = group.create_task(ticker())
        before = ticks
        chunks = await collect(make_tts(polly, retry=ONCE), "Still there?")
        during = ticks - before
        ticking.cancel()

    assert b"".join(chunks) == PCM
    assert during >= 3 + 2 * 4


@pytest.mark.parametrize("chunked", [True, False], ids=["chunked", "content-length"])
async def test_a_connection_dropped_mid_stream_fails_without_repeating_audio(
    polly: FakePolly, chunked: bool
) -> None:
    polly.script = [drop_after(10_001, chunked=chunked), audio()]
    received: list[bytes] = []

    with pytest.raises(ProviderError, match="polly") as info:
        async for chunk in make_tts(polly).synthesize("Your order has shipped."):
            received.append(chunk)

    audio_bytes = b"".join(received)
    assert 0 < len(audio_bytes) <= 10_000 and len(audio_bytes) % 2 == 0
    assert audio_bytes == PCM[: len(audio_bytes)]  # a prefix, nothing played twice
    assert len(polly.bodies) == 1  # audio had started: no retry
    assert info.value.provider == "polly"


async def test_closing_the_stream_early_closes_the_connection(polly: FakePolly) -> None:
    never = asyncio.Event()
    polly.script = [first_then_wait(never)]
    tts = make_tts(polly)
    stream = cast(AsyncGenerator[bytes, None], tts.synthesize("A long answer that the caller interrupts."))

    first = await anext(stream)
    await stream.aclose()  # e.g. the caller barged in

    assert first == PCM[: len(first)]
    async with asyncio.timeout(5):
        await polly.disconnected.wait()  # the server saw the client leave
    await tts.aclose()


async def test_missing_credentials_fail_before_any_request(
    polly: FakePolly, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")

    with pytest.raises(ProviderError, match="no AWS credentials") as info:
        await collect(make_tts(polly), "Hello.")

    assert not info.value.retryable
    assert polly.bodies == []


async def test_an_empty_body_for_words_is_a_retryable_error_not_silence(polly: FakePolly) -> None:
    polly.script = [audio(b"")] * 3

    with pytest.raises(ProviderError, match="polly: the response had no audio for 21 characters") as err:
        await collect(make_tts(polly), "Your table is booked.")

    assert err.value.retryable and len(polly.bodies) == 3


async def test_a_page_with_status_200_is_an_error_not_noise(polly: FakePolly) -> None:
    polly.script = [audio(b"<html>captive portal</html>", content_type="text/html")]

    with pytest.raises(ProviderError, match="polly returned 'text/html', not audio: b'<html>captive"):
        await collect(make_tts(polly), "Your table is booked.")

    assert len(polly.bodies) == 1


async def test_blank_text_sends_no_request(polly: FakePolly) -> None:
    assert await collect(make_tts(polly), "  \n") == []
    assert polly.bodies == []


async def test_an_unreachable_endpoint_is_a_retryable_error(aws_env: None) -> None:
    with socket.socket() as probe:  # a port that was free a moment ago: nothing listens on it
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    tts = PollyTTS(PollyConfig(endpoint_url=f"http://127.0.0.1:{port}", retry=ONCE))

    with pytest.raises(ProviderError, match="EndpointConnectionError") as info:
        await collect(tts, "Hello.")

    assert info.value.retryable


def test_region_comes_from_config_then_environment(aws_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    assert PollyTTS(PollyConfig(region="ap-southeast-2")).region == "ap-southeast-2"
    assert PollyTTS().region == "eu-west-1"
    monkeypatch.delenv("AWS_REGION")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-west-2")
    assert PollyTTS().region == "us-west-2"
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    assert PollyTTS().region == "us-east-1"


def test_from_options_takes_the_model_as_engine_and_nested_timeouts() -> None:
    tts = PollyTTS(
        PollyConfig.from_options(
            "generative",
            {"voice": "Matthew", "ssml": True, "timeouts": {"first_byte_s": 2}, "retry": {"attempts": 2}},
        )
    )
    assert tts.name == "polly" and tts.model == "generative"
    assert tts.config.voice == "Matthew" and tts.config.ssml
    assert tts.config.timeouts == Timeouts(first_byte_s=2)
    assert tts.config.retry == RetryPolicy(attempts=2)
    assert PollyConfig.from_options(None, {}) == PollyConfig()


@pytest.mark.parametrize(
    ("model", "options", "message"),
    [
        (None, {"voise": "Joanna"}, r"polly: unknown option\(s\) 'voise'"),
        (None, {"timeouts": {"read_s": 1}}, r"polly: unknown timeouts option\(s\) 'read_s'"),
        ("neural", {"engine": "standard"}, "disagree"),
        ("turbo", {}, "engine must be one of standard, neural, generative, long-form"),
        (None, {"ssml": "yes"}, "'ssml' must be a bool"),
        (None, {"retry": {"attempts": "3"}}, "polly: retry.attempts must be a number"),
        (None, {"voice": ""}, "voice must not be empty"),
    ],
)
def test_from_options_rejects_what_it_does_not_know(
    model: str | None, options: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        PollyConfig.from_options(model, options)
