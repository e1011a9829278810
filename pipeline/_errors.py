"""The pipeline's error tree: one root, shallow, retryable on the error itself."""

from __future__ import annotations


class PipelineError(Exception):
    """Root of every error the pipeline raises."""

    retryable: bool = False


class AudioFormatError(PipelineError):
    """Audio input that cannot be read or converted (names the file and the problem)."""


class ProviderError(PipelineError):
    """An STT, LLM or TTS provider failed; the message names the provider."""

    def __init__(self, message: str, *, provider: str, retryable: bool = False) -> None:
        super().__init__(message)
        self.provider = provider
        self.retryable = retryable
