"""Streaming speech-to-text interface.

An STT is process-wide (it owns models or HTTP clients); connect() gives a per-call session
(a socket, a decode queue) opened when the call starts so the first utterance pays no set-up;
each utterance is pushed frame by frame while the caller speaks and finalized at the endpoint.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

InterimCallback = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class Transcript:
    text: str
    audio_s: float
    """Seconds of audio the engine received for this utterance (what it bills)."""
    served_by: int = 0
    """Which provider of a fallback chain produced it (0: the first, or no chain)."""


class Utterance(ABC):
    @abstractmethod
    def push(self, pcm: bytes, voiced: bool) -> None:
        """Add one internal-format frame. Never blocks; must be cheap (it runs on the audio path).
        Frames pushed after finalize() or cancel() are ignored."""

    @abstractmethod
    async def finalize(self) -> Transcript:
        """The caller stopped: return the final transcript of everything pushed. Raises
        ProviderError if the engine fails or the utterance was cancelled."""

    @abstractmethod
    def cancel(self) -> None:
        """Drop the utterance; pending work is abandoned."""

    async def partial(self) -> str | None:
        """The transcript of everything pushed so far, while the caller pauses, if the engine has
        it before the utterance ends (Whisper: the decode it starts at a pause, which finalize()
        then reuses); None if it does not, and the session decides from the audio alone. Must not
        disturb the utterance: cancelling the caller abandons only the wait."""
        return None


class STTSession(ABC):
    @abstractmethod
    def begin(self, on_interim: InterimCallback | None = None) -> Utterance: ...

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release per-call resources."""


class STT(ABC):
    name: str
    model: str

    async def warm(self) -> None:  # noqa: B027 - optional hook
        """Load models once per process; called before the first call."""

    @abstractmethod
    async def connect(self) -> STTSession: ...

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release process-wide resources."""
