"""Streaming text-to-speech interface."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator

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

    def serving(self) -> int:
        """Which provider of a fallback chain serves requests now (0: the first, or no chain);
        read after a segment, it names the provider that spoke it."""
        return 0

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""


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
