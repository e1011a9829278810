"""Cloud TTS: Amazon Polly through boto3, as 16 kHz PCM so no resampling is needed.

boto3 blocks, so the SynthesizeSpeech call and every read of its audio stream run in the default
executor, one step at a time: the event loop only ever awaits a future. botocore's own retries
are off; transient failures are retried once, by `stream_with_retries`, before the first chunk.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal, Protocol, TypeVar, cast, get_args
from xml.sax.saxutils import escape

import structlog

from .._errors import ProviderError
from .._tts import TTS, expected_audio, whole_samples
from ._options import config_kwargs
from ._resilience import RetryPolicy, Timeouts, stream_with_retries

__all__ = ["PollyConfig", "PollyEngine", "PollyTTS"]

PROVIDER = "polly"
PollyEngine = Literal["standard", "neural", "generative", "long-form"]
ENGINES: tuple[PollyEngine, ...] = get_args(PollyEngine)
SAMPLE_RATE = "16000"
"""Polly's PCM is 16-bit mono little-endian at 8000 or 16000 Hz; a string in the API."""
CHUNK_BYTES = 3200
"""One read of the audio stream: 100 ms of 16 kHz int16."""
DEFAULT_REGION = "us-east-1"

# Codes of failures that may pass: throttling and AWS-side faults. Any other 4xx is the request's
# fault (bad SSML, text too long, credentials) and retrying it only repeats the error.
_RETRYABLE_CODES = frozenset(
    {
        "ThrottlingException",
        "Throttling",
        "TooManyRequestsException",
        "RequestLimitExceeded",
        "ServiceFailureException",
        "ServiceUnavailable",
        "ServiceUnavailableException",
        "InternalFailure",
        "InternalServerError",
        "RequestTimeout",
        "RequestTimeoutException",
    }
)
_CREDENTIAL_CODES = frozenset(
    {
        "AccessDeniedException",
        "AccessDenied",
        "UnrecognizedClientException",
        "InvalidSignatureException",
        "ExpiredTokenException",
        "IncompleteSignature",
        "MissingAuthenticationToken",
    }
)

log = structlog.get_logger("voicerun.pipeline.polly")

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class PollyConfig:
    voice: str = "Joanna"
    """A Polly VoiceId; it must support the engine."""
    engine: PollyEngine = "neural"
    language_code: str | None = None
    """Only for bilingual voices (e.g. "hi-IN" for Aditi); None is the voice's default language."""
    ssml: bool = False
    """Send the text as SSML: a `<speak>` document passes as is, anything else is escaped and wrapped."""
    region: str | None = None
    """None: AWS_REGION, then AWS_DEFAULT_REGION, then us-east-1."""
    endpoint_url: str | None = None
    """None: the regional AWS endpoint. Tests point it at a local server."""
    timeouts: Timeouts = field(default_factory=Timeouts)
    """connect_s bounds botocore's socket connect; each socket read gives up after 2 x first_byte_s."""
    retry: RetryPolicy = field(default_factory=RetryPolicy)

    def __post_init__(self) -> None:
        if not self.voice:
            raise ValueError("polly voice must not be empty")
        if self.engine not in ENGINES:
            raise ValueError(f"polly engine must be one of {', '.join(ENGINES)}, got {self.engine!r}")

    @classmethod
    def from_options(cls, model: str | None, options: Mapping[str, object]) -> PollyConfig:
        """Build from a workflow's provider spec: `model` is the engine, `options` the other fields.

        `timeouts` and `retry` are nested mappings of Timeouts' and RetryPolicy's fields. Unknown
        keys and wrongly typed values raise ValueError naming the key.
        """
        opts = config_kwargs("polly", cls, options)
        engine = _optional(opts, "engine", str)
        if model is not None and engine is not None and model != engine:
            raise ValueError(f"polly model {model!r} and option engine {engine!r} disagree; give one")
        engine = model if model is not None else engine
        voice = _optional(opts, "voice", str)
        ssml = _optional(opts, "ssml", bool)
        default = cls()
        return cls(
            voice=default.voice if voice is None else voice,
            # __post_init__ rejects an unknown engine by name.
            engine=default.engine if engine is None else cast(PollyEngine, engine),
            language_code=_optional(opts, "language_code", str),
            ssml=default.ssml if ssml is None else ssml,
            region=_optional(opts, "region", str),
            endpoint_url=_optional(opts, "endpoint_url", str),
            timeouts=opts.get("timeouts", default.timeouts),
            retry=opts.get("retry", default.retry),
        )


def _optional(options: Mapping[str, object], key: str, kind: type[T]) -> T | None:
    value = options.get(key)
    if value is None:
        return None
    if not isinstance(value, kind):
        raise ValueError(f"polly option {key!r} must be a {kind.__name__}, got {value!r}")
    return value


def _ssml_document(text: str) -> str:
    """`text` as a `<speak>` document: passed through if it is one, else XML-escaped and wrapped."""
    stripped = text.strip()
    if stripped.startswith("<speak") and stripped.endswith("</speak>"):
        return stripped
    return f"<speak>{escape(text)}</speak>"


class _AudioStream(Protocol):
    def read(self, amt: int) -> bytes: ...

    def close(self) -> None: ...


class _PollyClient(Protocol):
    def synthesize_speech(self, **params: str) -> Mapping[str, object]: ...

    def close(self) -> None: ...


def _make_client(config: PollyConfig, region: str) -> _PollyClient:
    """Blocking (imports boto3, resolves credentials): runs in a worker thread."""
    import boto3
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError

    try:
        session = boto3.session.Session(region_name=region)
        if session.get_credentials() is None:
            raise ProviderError(
                "polly: no AWS credentials found (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
                "or AWS_PROFILE, or run with an IAM role)",
                provider=PROVIDER,
            )
        client: _PollyClient = session.client(
            "polly",
            region_name=region,
            endpoint_url=config.endpoint_url,
            config=Config(
                connect_timeout=config.timeouts.connect_s,
                # Per socket read. stream_with_retries' first_byte_s decides; this is the backstop
                # that frees a worker thread stuck on a silent socket after the loop gave up on it,
                # set later so that the error the caller sees is always the same one.
                read_timeout=2 * config.timeouts.first_byte_s,
                # One attempt: retries happen once, in our policy, not again inside botocore.
                # total_max_attempts counts the first try; botocore's max_attempts counts only
                # retries, so max_attempts=1 would still let botocore retry throttling once.
                retries={"total_max_attempts": 1, "mode": "standard"},
            ),
        )
    except BotoCoreError as exc:
        raise ProviderError(f"polly: cannot set up the AWS client: {exc}", provider=PROVIDER) from exc
    return client


def _map_error(exc: Exception, params: Mapping[str, str]) -> ProviderError:
    """One botocore error -> ProviderError, retryable only if trying again may succeed."""
    from botocore import exceptions as bx

    where = f"(voice {params['VoiceId']}, engine {params['Engine']})"
    if isinstance(exc, bx.ClientError):
        error = exc.response.get("Error", {})
        code = error.get("Code", "unknown")
        message = error.get("Message", "")
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        retryable = code in _RETRYABLE_CODES or (isinstance(status, int) and (status >= 500 or status == 429))
        hint = (
            "; check the AWS credentials and their polly:SynthesizeSpeech permission"
            if code in _CREDENTIAL_CODES
            else ""
        )
        return ProviderError(
            f"polly returned {status} {code}: {message} {where}{hint}", provider=PROVIDER, retryable=retryable
        )
    if isinstance(exc, bx.NoCredentialsError | bx.PartialCredentialsError | bx.CredentialRetrievalError):
        return ProviderError(f"polly: AWS credentials unusable: {exc}", provider=PROVIDER)
    if isinstance(exc, bx.ConnectionError | bx.HTTPClientError | bx.IncompleteReadError):
        # EndpointConnectionError, ConnectTimeoutError, ReadTimeoutError, a connection dropped.
        return ProviderError(f"polly: {type(exc).__name__}: {exc} {where}", provider=PROVIDER, retryable=True)
    return ProviderError(f"polly: {type(exc).__name__}: {exc} {where}", provider=PROVIDER)


class _Request:
    """One SynthesizeSpeech request and its audio stream, driven from worker threads one step at a time.

    The loop may give up on a step (first-byte timeout, barge-in) while its thread is still blocked
    in botocore, and a thread cannot be interrupted: so whichever side is last closes the stream.
    Closing under a running read is not safe for urllib3, so a running step closes it itself.
    """

    def __init__(self, client: _PollyClient, params: Mapping[str, str]) -> None:
        self._client = client
        self._params = params
        self._lock = threading.Lock()
        self._stream: _AudioStream | None = None
        self._running = False
        self._abandoned = False
        self.billed_characters: int | None = None
        """Polly's count of billed characters (x-amzn-RequestCharacters): SSML tags excluded."""

    def open(self) -> bool:
        """Send the request; True once the response headers are in, False if abandoned. Blocking."""
        return self._step(self._open) is not None

    def read(self) -> bytes | None:
        """The next bytes of audio; b"" at the end, None if abandoned. Blocking."""
        return self._step(self._read)

    def abandon(self) -> None:
        """Close the stream now, or have the running step close it when it returns. Never blocks."""
        with self._lock:
            self._abandoned = True
            stream, running = self._stream, self._running
        if stream is not None and not running:
            stream.close()

    def _open(self) -> bool:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            response = self._client.synthesize_speech(**self._params)
        except (BotoCoreError, ClientError) as exc:
            raise _map_error(exc, self._params) from exc
        self._stream = cast(_AudioStream, response["AudioStream"])
        content_type = response.get("ContentType")
        if isinstance(content_type, str) and content_type.startswith(("application/json", "text/")):
            # A proxy or a wrong endpoint_url answering 200: played as PCM, its page is loud noise.
            head = self._stream.read(200)
            raise ProviderError(f"polly returned {content_type!r}, not audio: {head!r}", provider=PROVIDER)
        characters = response.get("RequestCharacters")
        self.billed_characters = characters if isinstance(characters, int) else None
        return True

    def _read(self) -> bytes:
        from botocore.exceptions import BotoCoreError

        assert self._stream is not None, "read() before open()"
        try:
            return self._stream.read(CHUNK_BYTES)
        except BotoCoreError as exc:
            raise _map_error(exc, self._params) from exc

    def _step(self, action: Callable[[], T]) -> T | None:
        with self._lock:
            if self._abandoned:
                return None
            self._running = True
        try:
            return action()
        finally:
            with self._lock:
                self._running = False
                stream = self._stream if self._abandoned else None
            if stream is not None:
                stream.close()


class PollyTTS(TTS):
    name = "polly"

    def __init__(self, config: PollyConfig | None = None) -> None:
        self.config = config if config is not None else PollyConfig()
        self.model = self.config.engine
        self.region = (
            self.config.region
            or os.environ.get("AWS_REGION")
            or os.environ.get("AWS_DEFAULT_REGION")
            or DEFAULT_REGION
        )
        self._client: _PollyClient | None = None
        self._client_lock = asyncio.Lock()

    async def warm(self) -> None:
        """Create the boto3 client (importing boto3, resolving credentials) in a worker thread.

        Raises ProviderError when no AWS credentials are found.
        """
        async with self._client_lock:
            if self._client is None:
                loop = asyncio.get_running_loop()
                self._client = await loop.run_in_executor(None, _make_client, self.config, self.region)

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.close()

    def _request_params(self, text: str) -> dict[str, str]:
        params = {
            "Text": _ssml_document(text) if self.config.ssml else text,
            "TextType": "ssml" if self.config.ssml else "text",
            "OutputFormat": "pcm",
            "SampleRate": SAMPLE_RATE,
            "VoiceId": self.config.voice,
            "Engine": self.config.engine,
        }
        if self.config.language_code is not None:
            params["LanguageCode"] = self.config.language_code
        return params

    async def synthesize(self, text: str) -> AsyncIterator[bytes]:
        """16 kHz int16 in chunks of up to CHUNK_BYTES; whitespace-only text sends no request.

        Raises ProviderError (retryable on the error) after the retry policy is spent, or at once
        for a request Polly refuses (invalid SSML, text too long, credentials).
        """
        if not text.strip():
            return
        await self.warm()
        assert self._client is not None
        client, params = self._client, self._request_params(text)
        requests: list[_Request] = []

        async def attempt() -> AsyncIterator[bytes]:
            request = _Request(client, params)
            requests.append(request)
            loop = asyncio.get_running_loop()
            try:
                if not await loop.run_in_executor(None, request.open):
                    return
                while chunk := await loop.run_in_executor(None, request.read):
                    yield chunk
            finally:
                request.abandon()

        characters = len(text)
        log.info("tts_request", provider=PROVIDER, voice=self.config.voice, engine=self.config.engine,
                 characters=characters)  # fmt: skip
        started = time.perf_counter()
        ttfb_ms: int | None = None
        audio_bytes = 0
        # An async generator: closed explicitly below, so a barge-in closes the HTTP stream now.
        stream = cast(
            AsyncGenerator[bytes, None],
            stream_with_retries(
                attempt,
                provider=PROVIDER,
                timeouts=self.config.timeouts,
                retry=self.config.retry,
                empty=expected_audio(text),
            ),
        )
        try:
            async for chunk in whole_samples(stream, PROVIDER):
                if ttfb_ms is None:
                    ttfb_ms = round((time.perf_counter() - started) * 1000)
                audio_bytes += len(chunk)
                yield chunk
        finally:
            await stream.aclose()
        log.info(
            "tts_done",
            provider=PROVIDER,
            voice=self.config.voice,
            engine=self.config.engine,
            characters=characters,
            billed_characters=requests[-1].billed_characters if requests else None,
            attempts=len(requests),
            ttfb_ms=ttfb_ms,
            audio_ms=audio_bytes // 32,
            total_ms=round((time.perf_counter() - started) * 1000),
        )
