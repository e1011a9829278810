"""Streaming text-to-speech interface."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable

import structlog

log = structlog.get_logger("voicerun.pipeline")


class TTS(ABC):
    name: str
    model: str

    async def warm(self) -> None:  # noqa: B027 - optional hook
        """Load models or open connections once per process."""

    @abstractmethod
    def synthesize(self, text: str) -> AsyncIterator[bytes]:
        """Stream internal-format PCM (16 kHz mono int16) for text, in chunks of any length."""

    def synthesis(self, text: str) -> Synthesis:
        """synthesize(), as a stream that names the provider that spoke it (a fallback chain's
        index): usage is billed by the request's own answer, never by the chain's shared state,
        which another call's failover may have moved meanwhile."""
        return Synthesis(lambda _: self.synthesize(text))

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""


class Synthesis:
    """One TTS request's audio; `served_by` is final once the stream has ended (or failed)."""

    __slots__ = ("_chunks", "served_by")

    def __init__(self, stream: Callable[[Synthesis], AsyncIterator[bytes]]) -> None:
        self.served_by = 0
        """Which provider of a fallback chain produced the audio (0: the first, or no chain)."""
        self._chunks = stream(self)

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._chunks

    async def aclose(self) -> None:
        aclose = getattr(self._chunks, "aclose", None)
        if aclose is not None:
            await aclose()


def expected_audio(text: str) -> str | None:
    """For a cloud TTS request: what an empty response lacks, when the text has something to say
    (a letter or a digit); None for text such as "..." that a provider may rightly leave silent."""
    if not any(ch.isalnum() for ch in text):
        return None
    return f"no audio for {len(text)} characters of text"


async def whole_samples(chunks: AsyncIterator[bytes], source: str) -> AsyncIterator[bytes]:
    """int16 PCM cut anywhere -> the same bytes in chunks of whole samples.

    A network read can end between the two bytes of a sample; the byte is carried to the next
    chunk. One left over at the end would shift every later sample by a byte (loud noise), so it
    is dropped, with a `tts_odd_byte_dropped` warning naming `source`.
    """
    carry = b""
    async for chunk in chunks:
        data = carry + chunk if carry else chunk
        even = len(data) & ~1
        carry = data[even:]
        if even:
            yield data[:even]
    if carry:
        log.warning("tts_odd_byte_dropped", provider=source)
