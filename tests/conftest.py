"""Shared fixtures."""

from __future__ import annotations

from collections.abc import Iterator, MutableMapping
from dataclasses import dataclass
from typing import Any

import pytest
import pytest_asyncio
import structlog

# -- speech synthesized by the embedded TTS (tests of the offline engines) ---------------------

SPEECH_SENTENCES = (
    "Please send the invoice to my office by Friday.",
    "I would like to book a table for two people tonight.",
    "Can you tell me the balance of my savings account?",
    "The weather should be sunny and warm tomorrow morning.",
    "My order number is printed on the receipt.",
)


@dataclass(frozen=True, slots=True)
class SpeechSample:
    text: str
    pcm: bytes
    """16 kHz mono int16, as the pipeline carries it."""


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def speech_samples() -> tuple[SpeechSample, ...]:
    """SPEECH_SENTENCES spoken by HibariTTS (fixed seed), synthesized once per test session."""
    from pipeline.providers import HibariConfig, HibariTTS

    tts = HibariTTS(HibariConfig(seed=7))
    samples = []
    for text in SPEECH_SENTENCES:
        samples.append(SpeechSample(text, b"".join([chunk async for chunk in tts.synthesize(text)])))
    return tuple(samples)


@pytest.fixture
def captured_logs() -> Iterator[list[MutableMapping[str, Any]]]:
    """Every structlog event, after the real context merge (so call_id and agent are visible)."""
    events: list[MutableMapping[str, Any]] = []

    def keep(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> Any:
        events.append(event)
        raise structlog.DropEvent

    old = structlog.get_config()
    structlog.configure(
        processors=[structlog.contextvars.merge_contextvars, keep], cache_logger_on_first_use=False
    )
    try:
        yield events
    finally:
        structlog.configure(**old)
