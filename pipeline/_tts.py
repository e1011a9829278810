"""Streaming text-to-speech interface."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator


class TTS(ABC):
    name: str
    model: str

    async def warm(self) -> None:  # noqa: B027 - optional hook
        """Load models or open connections once per process."""

    @abstractmethod
    def synthesize(self, text: str) -> AsyncIterator[bytes]:
        """Stream internal-format PCM (16 kHz mono int16) for text, in chunks of any length."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""
