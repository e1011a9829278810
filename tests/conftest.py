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


@pytest.fixture(autouse=True)
def _data_dir(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Local state (the embedded ledger) of commands run by a test goes to a temporary
    directory, never the checkout's data/."""
    monkeypatch.setenv("VOICERUN_DATA_DIR", str(tmp_path_factory.mktemp("data")))


class LogWatch:
    """Structlog events as they happen, and a way to wait for one (no polling, no sleeps)."""

    def __init__(self) -> None:
        self.events: list[MutableMapping[str, Any]] = []
        self._waiting: list[tuple[str, int, Any]] = []

    def __call__(self, _logger: Any, _method: str, event: MutableMapping[str, Any]) -> Any:
        self.events.append(event)
        for name, count, done in self._waiting:
            if self.count(name) >= count:
                done.set()
        raise structlog.DropEvent

    def count(self, name: str) -> int:
        return sum(1 for e in self.events if e["event"] == name)

    async def wait_for(self, name: str, count: int = 1) -> None:
        """Until `name` has been logged `count` times; bound it with asyncio.timeout()."""
        import asyncio

        done = asyncio.Event()
        if self.count(name) >= count:
            return
        self._waiting.append((name, count, done))
        await done.wait()


@pytest.fixture
def log_watch() -> Iterator[LogWatch]:
    watch = LogWatch()
    old = structlog.get_config()
    structlog.configure(
        processors=[structlog.contextvars.merge_contextvars, watch], cache_logger_on_first_use=False
    )
    try:
        yield watch
    finally:
        structlog.configure(**old)


# -- the ledger's databases: SQLite always, PostgreSQL when a server is configured -------------

PG_ENV = "VOICERUN_TEST_DATABASE_URL"
PG_SKIP = (
    f"no PostgreSQL configured: set {PG_ENV}=postgresql://postgres@127.0.0.1:5432/test "
    "to run the ledger's tests against a server (.ci/run does)"
)


@pytest_asyncio.fixture(params=["sqlite", "postgresql"])
async def database_url(request: pytest.FixtureRequest, tmp_path: Any) -> Any:
    """A fresh, empty database for one test: a SQLite file, or a PostgreSQL database of its own
    (created from the server in $VOICERUN_TEST_DATABASE_URL and dropped afterwards), so runs and
    tests never see each other's rows. A configured server that is unreachable fails the test:
    skipping would hide a broken CI."""
    import os
    import uuid

    from sqlalchemy.engine import make_url

    from metering import database_url as to_async_url

    if request.param == "sqlite":
        yield to_async_url(None, tmp_path)
        return
    server = os.environ.get(PG_ENV)
    if not server:
        pytest.skip(PG_SKIP)
    import asyncpg

    admin = make_url(to_async_url(server, tmp_path))
    dsn = admin.set(drivername="postgresql").render_as_string(hide_password=False)
    name = f"voicerun_test_{uuid.uuid4().hex[:16]}"
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    try:
        yield admin.set(database=name).render_as_string(hide_password=False)
    finally:
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()
