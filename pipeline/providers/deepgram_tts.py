"""Cloud TTS: Deepgram Aura over its REST endpoint, 16 kHz linear16 streamed into the pipeline.

One POST /v1/speak per segment on a kept-alive HTTP connection: the streaming response starts
with the first audio, and later segments and turns reuse the connection instead of paying a
websocket handshake (TCP, TLS, upgrade) each, as one speak socket per segment did. (A long-lived
speak socket would also do, but Deepgram allows 20 Flush messages per 60 s on one.) The shared
stream_with_retries retries a failed request until the first audio arrives, never after.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any, cast

import httpx
import structlog

from .._audio import SAMPLE_RATE
from .._errors import ProviderError
from .._tts import TTS, expected_audio, whole_samples
from ._options import config_kwargs
from ._resilience import RetryPolicy, Timeouts, stream_with_retries
from .deepgram_stt import make_client, map_connect_error, resolve_api_key

__all__ = ["DeepgramTTS", "DeepgramTTSConfig"]

PROVIDER = "deepgram"
log = structlog.get_logger("voicerun.pipeline.deepgram")


@dataclass(frozen=True, slots=True)
class DeepgramTTSConfig:
    model: str = "aura-2-thalia-en"
    """An Aura voice, e.g. aura-2-thalia-en, aura-2-andromeda-en."""
    api_key: str | None = None
    """None reads DEEPGRAM_API_KEY."""
    base_url: str | None = None
    """Origin such as http://127.0.0.1:8080 (ws:// is accepted too); None is Deepgram's."""
    timeouts: Timeouts = field(default_factory=Timeouts)
    retry: RetryPolicy = field(default_factory=RetryPolicy)

    @classmethod
    def from_options(cls, model: str | None, options: Mapping[str, Any]) -> DeepgramTTSConfig:
        """A config from a workflow's provider spec; unknown keys are an error."""
        opts = config_kwargs("deepgram tts", cls, options)
        if model:
            opts["model"] = model
        return cls(**opts)


KEEPALIVE_S = 90.0
"""Idle connections kept this long (httpx's default, 5 s, is shorter than a caller's turn)."""


class DeepgramTTS(TTS):
    name = "deepgram"

    def __init__(self, config: DeepgramTTSConfig | None = None) -> None:
        self.config = config if config is not None else DeepgramTTSConfig()
        self.model = self.config.model
        t = self.config.timeouts
        self._http = httpx.AsyncClient(
            timeout=httpx.Timeout(t.total_s, connect=t.connect_s, read=t.first_byte_s, write=t.connect_s),
            limits=httpx.Limits(max_keepalive_connections=20, keepalive_expiry=KEEPALIVE_S),
        )
        self._client = make_client(
            resolve_api_key(self.config.api_key), self.config.base_url, http=self._http
        )

    async def synthesize(self, text: str) -> AsyncIterator[bytes]:
        """16 kHz mono int16, in chunks of whole samples as they stream in."""
        if not text.strip():
            return
        stream = stream_with_retries(
            lambda: self._speak(text),
            provider=PROVIDER,
            timeouts=self.config.timeouts,
            retry=self.config.retry,
            empty=expected_audio(text),
        )
        async for chunk in whole_samples(stream, PROVIDER):
            yield chunk

    async def _speak(self, text: str) -> AsyncIterator[bytes]:
        from deepgram.core.api_error import ApiError

        started = time.perf_counter()
        received = 0
        try:
            async with self._client.speak.v1.audio.with_raw_response.generate(
                text=text, model=self.model, encoding="linear16", sample_rate=SAMPLE_RATE, container="none"
            ) as response:
                data = cast("AsyncGenerator[bytes, None]", response.data)
                # A proxy or a wrong base_url can answer 200 with a page or JSON: played as
                # linear16, that is loud noise.
                content_type = response.headers.get("content-type", "")
                if content_type.startswith(("application/json", "text/")):
                    head = b""
                    async for chunk in data:
                        head += chunk
                        if len(head) >= 200:
                            break
                    raise ProviderError(
                        f"deepgram speak returned {content_type!r}, not audio: {head[:200]!r}",
                        provider=PROVIDER,
                    )
                async with aclosing(data):
                    async for chunk in data:
                        if chunk:
                            if not received:
                                log.debug(
                                    "tts_first_audio",
                                    provider=PROVIDER,
                                    ms=round((time.perf_counter() - started) * 1000),
                                )
                            received += len(chunk)
                            yield chunk
        except ApiError as exc:
            raise _api_error(exc) from exc
        except httpx.HTTPError as exc:
            what = "stopped mid-stream" if received else "request failed"
            raise ProviderError(
                f"deepgram speak {what}: {type(exc).__name__}: {exc}", provider=PROVIDER, retryable=True
            ) from exc

    async def aclose(self) -> None:
        await self._http.aclose()


def _api_error(exc: Any) -> ProviderError:
    """An HTTP error answer: the status decides retrying; Deepgram's own message is kept."""
    mapped = map_connect_error(exc, "speak")
    body = exc.body if isinstance(exc.body, Mapping) else {}
    detail = body.get("err_msg") or body.get("message")
    if not isinstance(detail, str) or not detail:
        return mapped
    return ProviderError(f"{mapped}: {detail[:200]}", provider=PROVIDER, retryable=mapped.retryable)
