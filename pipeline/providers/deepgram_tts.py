"""Cloud TTS: Deepgram Aura over the speak websocket, 16 kHz linear16 straight into the pipeline.

One socket per synthesize(): send the text and Flush, stream binary audio until Flushed. The
shared stream_with_retries retries a failed connection until the first audio arrives, never after.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import structlog
import websockets.exceptions

from .._audio import SAMPLE_RATE
from .._errors import ProviderError
from .._tts import TTS
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
    """Websocket origin such as ws://127.0.0.1:8080; None is Deepgram's production endpoint."""
    timeouts: Timeouts = field(default_factory=Timeouts)
    retry: RetryPolicy = field(default_factory=RetryPolicy)

    @classmethod
    def from_options(cls, model: str | None, options: Mapping[str, Any]) -> DeepgramTTSConfig:
        """A config from a workflow's provider spec; unknown keys are an error."""
        opts = config_kwargs("deepgram tts", cls, options)
        if model:
            opts["model"] = model
        return cls(**opts)


class DeepgramTTS(TTS):
    name = "deepgram"

    def __init__(self, config: DeepgramTTSConfig | None = None) -> None:
        self.config = config if config is not None else DeepgramTTSConfig()
        self.model = self.config.model
        self._client = make_client(resolve_api_key(self.config.api_key), self.config.base_url)

    async def synthesize(self, text: str) -> AsyncIterator[bytes]:
        """16 kHz mono int16, in chunks of whole samples as Deepgram sends them."""
        stream = stream_with_retries(
            lambda: self._speak(text),
            provider=PROVIDER,
            timeouts=self.config.timeouts,
            retry=self.config.retry,
        )
        odd = b""  # a sample split across two websocket frames
        async for chunk in stream:
            data = odd + chunk
            cut = len(data) - len(data) % 2
            odd = data[cut:]
            if cut:
                yield data[:cut]

    async def _speak(self, text: str) -> AsyncIterator[bytes]:
        from deepgram.speak.v1.types.speak_v1flushed import SpeakV1Flushed
        from deepgram.speak.v1.types.speak_v1text import SpeakV1Text
        from deepgram.speak.v1.types.speak_v1warning import SpeakV1Warning

        try:
            async with self._client.speak.v1.connect(
                model=self.model, encoding="linear16", sample_rate=SAMPLE_RATE
            ) as sock:
                await sock.send_text(SpeakV1Text(type="Speak", text=text))
                await sock.send_flush()
                while True:
                    try:
                        message = await sock.recv()
                    except json.JSONDecodeError as exc:
                        raise ProviderError(
                            f"deepgram speak sent a frame that is not JSON: {exc.doc[:60]!r}",
                            provider=PROVIDER,
                        ) from exc
                    except websockets.exceptions.ConnectionClosed as exc:
                        raise ProviderError(
                            f"deepgram speak closed before Flushed (code {exc.rcvd.code if exc.rcvd else None})",
                            provider=PROVIDER,
                            retryable=True,
                        ) from exc
                    if isinstance(message, bytes):
                        if message:
                            yield message
                    elif isinstance(message, SpeakV1Flushed):
                        break
                    elif isinstance(message, SpeakV1Warning):
                        raise ProviderError(
                            f"deepgram speak warning {message.code}: {message.description}", provider=PROVIDER
                        )
                    # Metadata and Cleared carry nothing we need.
                with contextlib.suppress(websockets.exceptions.ConnectionClosed):
                    await sock.send_close()
        except ProviderError:
            raise
        except Exception as exc:
            raise map_connect_error(exc, "speak") from exc
