"""DeepgramSTT against a local Deepgram: a /v1/listen websocket speaking Deepgram's message JSON.

The fake's "recognizer" reads words out of the audio: a test frame carries an ASCII word at its
start (the rest is silence), and a frame holding "|" is a pause Deepgram would endpoint on.
Results carry start and duration in stream seconds, as Deepgram's do.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import pytest_asyncio
from aiohttp import WSMsgType, web

from pipeline import ProviderError
from pipeline.providers._resilience import RetryPolicy, Timeouts
from pipeline.providers.deepgram_stt import DeepgramSTT, DeepgramSTTConfig, DeepgramSTTSession

API_KEY = "test-key"
FRAME_BYTES = 640
BYTES_PER_S = 32_000


def word_frame(word: str) -> bytes:
    raw = word.encode()
    return raw + bytes(FRAME_BYTES - len(raw))


def frame_word(frame: bytes) -> str:
    return frame.rstrip(b"\0").decode(errors="replace")


@dataclass
class Connection:
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    frames: list[bytes] = field(default_factory=list)
    texts: list[dict[str, Any]] = field(default_factory=list)
    closed: bool = False

    @property
    def words(self) -> list[str]:
        return [frame_word(f) for f in self.frames]

    def sent(self, type_: str) -> int:
        return sum(1 for t in self.texts if t.get("type") == type_)


@dataclass
class Script:
    reject_statuses: list[int] = field(default_factory=list)
    """HTTP statuses for the next upgrade attempts, one per attempt."""
    drop_after_frames: int | None = None
    """First listen connection: close with 1011 after this many audio frames."""
    drop_all_after_frames: int | None = None
    """Every listen connection: close with 1011 after this many audio frames."""
    garbage_after_frames: int | None = None
    """First listen connection: send the `garbage` text frame after this many audio frames."""
    garbage: str = "{not json"
    answer_finalize: bool = True


class FakeDeepgram:
    def __init__(self) -> None:
        self.script = Script()
        self.connections: list[Connection] = []
        self.attempts = 0
        self._changed = asyncio.Condition()
        self.url = ""

    async def until(self, predicate: Callable[[], bool], timeout_s: float = 3.0) -> None:
        """Wait until predicate() holds (checked at each server event)."""
        async with asyncio.timeout(timeout_s), self._changed:
            await self._changed.wait_for(predicate)

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    def listens(self) -> list[Connection]:
        return [c for c in self.connections if c.path == "/v1/listen"]

    async def _accept(self, request: web.Request) -> tuple[web.WebSocketResponse, Connection] | web.Response:
        self.attempts += 1
        await self._notify()
        if self.script.reject_statuses:
            return web.Response(status=self.script.reject_statuses.pop(0), text="rejected")
        if request.headers.get("Authorization") != f"Token {API_KEY}":
            return web.Response(status=401, text="bad key")
        conn = Connection(
            request.path,
            {k: request.query.getall(k) for k in request.query},
            dict(request.headers),
        )
        self.connections.append(conn)
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await self._notify()
        return ws, conn

    async def listen(self, request: web.Request) -> web.StreamResponse:
        accepted = await self._accept(request)
        if isinstance(accepted, web.Response):
            return accepted
        ws, conn = accepted
        first = len(self.listens()) == 1
        pending: list[str] = []
        final_end = 0.0
        received = 0

        async def result(is_final: bool, speech_final: bool = False, from_finalize: bool = False) -> None:
            nonlocal final_end
            now = received / BYTES_PER_S
            msg = {
                "type": "Results",
                "channel_index": [0, 1],
                "duration": round(now - final_end, 3),
                "start": round(final_end, 3),
                "is_final": is_final,
                "speech_final": speech_final,
                "from_finalize": from_finalize,
                "channel": {
                    "alternatives": [{"transcript": " ".join(pending), "confidence": 0.99, "words": []}]
                },
                "metadata": {
                    "request_id": "r",
                    "model_info": {"name": "n", "version": "v", "arch": "a"},
                    "model_uuid": "u",
                },
            }
            await ws.send_str(json.dumps(msg))
            if is_final:
                pending.clear()
                final_end = now

        async for msg in ws:
            if msg.type == WSMsgType.BINARY:
                conn.frames.append(msg.data)
                received += len(msg.data)
                word = frame_word(msg.data)
                if word == "|":
                    await result(True, speech_final=True)
                elif word:
                    pending.append(word)
                    await result(False)
                n = len(conn.frames)
                if first and self.script.garbage_after_frames == n:
                    await ws.send_str(self.script.garbage)
                drop_at = self.script.drop_all_after_frames or (
                    self.script.drop_after_frames if first else None
                )
                if drop_at == n:
                    conn.closed = True
                    await self._notify()
                    await ws.close(code=1011, message=b"NET-0001")
                    break
            elif msg.type == WSMsgType.TEXT:
                data = json.loads(msg.data)
                conn.texts.append(data)
                if data.get("type") == "Finalize" and self.script.answer_finalize:
                    await result(True, from_finalize=True)
                elif data.get("type") == "CloseStream":
                    await ws.send_str(json.dumps({"type": "Metadata", "request_id": "r"}))
                    await ws.close()
            await self._notify()
        conn.closed = True
        await self._notify()
        return ws


@pytest_asyncio.fixture
async def fake() -> AsyncIterator[FakeDeepgram]:
    server_ = FakeDeepgram()
    app = web.Application()
    app.router.add_get("/v1/listen", server_.listen)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    server_.url = f"ws://127.0.0.1:{port}"
    try:
        yield server_
    finally:
        await runner.cleanup()


FAST = RetryPolicy(attempts=3, backoff_s=0.001, backoff_max_s=0.002)


def config(fake: FakeDeepgram, **overrides: Any) -> DeepgramSTTConfig:
    base: dict[str, Any] = {
        "api_key": API_KEY,
        "base_url": fake.url,
        "retry": FAST,
        "timeouts": Timeouts(connect_s=2.0, first_byte_s=2.0, total_s=10.0),
    }
    base.update(overrides)
    return DeepgramSTTConfig(**base)


async def open_session(fake: FakeDeepgram, **overrides: Any) -> DeepgramSTTSession:
    return await DeepgramSTT(config(fake, **overrides)).connect()


def push_words(utterance: Any, *words: str) -> None:
    for w in words:
        utterance.push(word_frame(w), voiced=w != "|")


async def test_connect_opens_the_socket_with_the_options_and_the_key(fake: FakeDeepgram) -> None:
    session = await open_session(fake, keyterms=("voicerun", "Aura"), endpointing_ms=250, language="en-US")
    try:
        # Pre-warmed: the socket is open before the first utterance begins.
        [conn] = fake.listens()
        q = {k: v if k == "keyterm" else v[0] for k, v in conn.query.items()}
        assert q["model"] == "nova-3" and q["language"] == "en-US"
        assert q["encoding"] == "linear16" and q["sample_rate"] == "16000" and q["channels"] == "1"
        assert q["interim_results"] == "true" and q["endpointing"] == "250"
        assert q["keyterm"] == ["voicerun", "Aura"] and "keywords" not in q
        # Without these Deepgram returns lower-case text with no punctuation.
        assert q["smart_format"] == "true" and q["punctuate"] == "true"
        assert conn.headers["Authorization"] == f"Token {API_KEY}"
    finally:
        await session.aclose()


async def test_formatting_can_be_turned_off(fake: FakeDeepgram) -> None:
    session = await open_session(fake, smart_format=False, punctuate=False)
    try:
        [conn] = fake.listens()
        assert conn.query["smart_format"] == ["false"] and conn.query["punctuate"] == ["false"]
    finally:
        await session.aclose()


@pytest.mark.parametrize("value", ["no", 0, None])
def test_formatting_options_must_be_booleans(value: object) -> None:
    with pytest.raises(ValueError, match=f"deepgram smart_format must be true or false, got {value!r}"):
        DeepgramSTTConfig.from_options(None, {"api_key": "k", "smart_format": value})


async def test_interims_then_the_final_transcript(fake: FakeDeepgram) -> None:
    session = await open_session(fake)
    interims: list[str] = []
    both = asyncio.Event()

    def on_interim(text: str) -> None:
        interims.append(text)
        if len(interims) == 2:
            both.set()

    try:
        utterance = session.begin(on_interim)
        push_words(utterance, "hello", "there")
        await both.wait()
        transcript = await utterance.finalize()
        assert interims == ["hello", "hello there"]
        assert transcript.text == "hello there"
        assert transcript.audio_s == pytest.approx(0.04)
        assert fake.listens()[0].sent("Finalize") == 1
    finally:
        await session.aclose()


async def test_finalize_joins_every_final_of_the_utterance_and_only_its_own(fake: FakeDeepgram) -> None:
    session = await open_session(fake)
    try:
        first = session.begin()
        push_words(first, "book", "a", "|", "table", "please")
        assert (await first.finalize()).text == "book a table please"
        second = session.begin()
        push_words(second, "for", "two")
        assert (await second.finalize()).text == "for two"
        assert len(fake.listens()) == 1  # one socket for the whole call
    finally:
        await session.aclose()


async def test_a_finalize_deepgram_does_not_answer_is_complete_when_finals_cover_the_audio(
    fake: FakeDeepgram,
) -> None:
    fake.script.answer_finalize = False
    session = await open_session(fake)
    try:
        utterance = session.begin()
        push_words(utterance, "yes", "|")
        await fake.until(lambda: len(fake.listens()[0].frames) == 2)
        assert (await utterance.finalize()).text == "yes"
    finally:
        await session.aclose()


async def test_no_final_result_times_out_with_a_clear_error(fake: FakeDeepgram) -> None:
    fake.script.answer_finalize = False
    session = await open_session(fake, timeouts=Timeouts(connect_s=2.0, first_byte_s=0.1, total_s=10.0))
    try:
        utterance = session.begin()
        push_words(utterance, "hmm")
        with pytest.raises(ProviderError, match=r"no final result within 0.1 s") as err:
            await utterance.finalize()
        assert err.value.retryable
    finally:
        await session.aclose()


async def test_keepalive_is_sent_while_idle(fake: FakeDeepgram) -> None:
    session = await open_session(fake, keepalive_s=0.02)
    try:
        await fake.until(lambda: fake.listens()[0].sent("KeepAlive") >= 2)
        assert session.stats.keepalives >= 2
    finally:
        await session.aclose()


async def test_a_dropped_socket_reconnects_and_replays_the_utterance(fake: FakeDeepgram) -> None:
    fake.script.drop_after_frames = 4  # after a final ("one two") and one more word
    session = await open_session(fake)
    interims: list[str] = []
    try:
        utterance = session.begin(interims.append)
        push_words(utterance, "one", "two", "|", "three")
        await fake.until(lambda: len(fake.listens()) == 2 and len(fake.listens()[1].frames) == 4)
        push_words(utterance, "four")
        transcript = await utterance.finalize()
        assert transcript.text == "one two three four"  # nothing lost, nothing doubled
        first, second = fake.listens()
        assert first.closed and first.words == ["one", "two", "|", "three"]
        assert second.words == ["one", "two", "|", "three", "four"]
        assert second.sent("Finalize") == 1
        assert session.stats.reconnects == 1 and session.stats.replayed_frames == 4
        assert transcript.audio_s == pytest.approx(0.18)  # 4 frames twice, 1 once: what is billed
    finally:
        await session.aclose()


async def test_a_drop_after_finalize_replays_audio_and_finalize(fake: FakeDeepgram) -> None:
    fake.script.drop_after_frames = 2
    fake.script.answer_finalize = True
    session = await open_session(fake)
    try:
        utterance = session.begin()
        push_words(utterance, "call", "me")
        transcript = await utterance.finalize()
        assert transcript.text == "call me"
        assert fake.listens()[1].words == ["call", "me"]
    finally:
        await session.aclose()


async def test_a_socket_that_keeps_dropping_fails_the_session(fake: FakeDeepgram) -> None:
    fake.script.drop_all_after_frames = 1  # silence: no result ever arrives before the drop
    session = await open_session(fake)
    try:
        utterance = session.begin()
        push_words(utterance, "")
        with pytest.raises(ProviderError, match="dropped 3 times in a row without a result"):
            await utterance.finalize()
        assert len(fake.listens()) == 3
        later = session.begin()
        push_words(later, "hello")
        with pytest.raises(ProviderError, match="dropped 3 times"):
            await later.finalize()
    finally:
        await session.aclose()


async def test_a_malformed_frame_fails_the_utterance_and_the_call_goes_on(fake: FakeDeepgram) -> None:
    fake.script.garbage_after_frames = 1
    session = await open_session(fake)
    try:
        broken = session.begin()
        push_words(broken, "lost")
        with pytest.raises(ProviderError, match=r"cannot read \(not JSON: '\{not json'\)"):
            await broken.finalize()
        assert session.stats.malformed_frames == 1
        next_one = session.begin()
        push_words(next_one, "fine")
        assert (await next_one.finalize()).text == "fine"
    finally:
        await session.aclose()


@pytest.mark.parametrize(
    "frame",
    [
        '{"type": "Results"}',
        '{"type": "Results", "channel": {"alternatives": "none"}, "start": "x", "duration": 1}',
        '{"type": "Results", "channel": null, "start": 0, "duration": 0.02, "is_final": true}',
        '{"type": "Results", "channel": {"alternatives": [{}]}, "start": 0, "duration": 0.02}',
    ],
    ids=["no-fields", "wrong-types", "null-channel", "alternative-without-transcript"],
)
async def test_a_result_of_the_wrong_shape_fails_the_utterance_and_the_call_goes_on(
    fake: FakeDeepgram, frame: str
) -> None:
    # A result we cannot read may have carried words: it used to be skipped with a log line, so
    # the utterance could complete without them.
    fake.script.garbage_after_frames = 1
    fake.script.garbage = frame
    session = await open_session(fake)
    try:
        broken = session.begin()
        push_words(broken, "lost")
        with pytest.raises(ProviderError, match=r"deepgram sent a frame it cannot read \(a result without"):
            await broken.finalize()
        assert session.stats.malformed_frames == 1
        next_one = session.begin()
        push_words(next_one, "fine")
        assert (await next_one.finalize()).text == "fine"
    finally:
        await session.aclose()


@pytest.mark.parametrize("frame", ["[1, 2, 3]", "null", '{"type": "SomethingNew", "x": 1}'])
async def test_json_that_is_not_a_result_is_ignored(fake: FakeDeepgram, frame: str) -> None:
    fake.script.garbage_after_frames = 1
    fake.script.garbage = frame
    session = await open_session(fake)
    try:
        utterance = session.begin()
        push_words(utterance, "kept")
        assert (await utterance.finalize()).text == "kept"
        assert session.stats.malformed_frames == 0
    finally:
        await session.aclose()


async def test_a_full_send_queue_is_counted_and_loses_no_audio(fake: FakeDeepgram) -> None:
    session = await open_session(fake, send_queue_frames=2)
    try:
        utterance = session.begin()
        push_words(utterance, "a", "b", "c", "d", "e")  # the sender cannot run in between
        assert session.stats.queue_full == 3
        assert (await utterance.finalize()).text == "a b c d e"
        assert fake.listens()[0].words == ["a", "b", "c", "d", "e"]
    finally:
        await session.aclose()


async def test_a_cancelled_utterance_keeps_its_words_out_of_the_next(fake: FakeDeepgram) -> None:
    session = await open_session(fake)
    try:
        dropped = session.begin()
        push_words(dropped, "uh")
        await fake.until(lambda: len(fake.listens()[0].frames) == 1)
        dropped.cancel()
        with pytest.raises(ProviderError, match="cancelled"):
            await dropped.finalize()
        kept = session.begin()
        push_words(kept, "yes")
        assert (await kept.finalize()).text == "yes"
    finally:
        await session.aclose()


async def test_cancel_during_finalize_is_a_provider_error(fake: FakeDeepgram) -> None:
    fake.script.answer_finalize = False
    session = await open_session(fake)
    try:
        utterance = session.begin()
        push_words(utterance, "wait")
        pending = asyncio.create_task(utterance.finalize())
        await fake.until(lambda: fake.listens()[0].sent("Finalize") == 1)
        utterance.cancel()
        with pytest.raises(ProviderError, match="cancelled during finalize"):
            await pending
    finally:
        await session.aclose()


async def test_an_empty_utterance_returns_no_text_without_a_round_trip(fake: FakeDeepgram) -> None:
    session = await open_session(fake)
    try:
        assert (await session.begin().finalize()).text == ""
        assert fake.listens()[0].sent("Finalize") == 0
    finally:
        await session.aclose()


async def test_aclose_sends_close_stream(fake: FakeDeepgram) -> None:
    session = await open_session(fake)
    await session.aclose()
    conn = fake.listens()[0]
    assert conn.sent("CloseStream") == 1
    await fake.until(lambda: conn.closed)


async def test_a_rejected_key_is_a_clear_error_that_is_not_retried(fake: FakeDeepgram) -> None:
    stt = DeepgramSTT(config(fake, api_key="wrong-key"))
    with pytest.raises(ProviderError, match=r"deepgram listen rejected the API key \(HTTP 401\)") as err:
        await stt.connect()
    assert not err.value.retryable and fake.attempts == 1
    assert "wrong-key" not in str(err.value)


async def test_a_transient_upgrade_failure_is_retried(fake: FakeDeepgram) -> None:
    fake.script.reject_statuses = [503]
    session = await open_session(fake)
    try:
        assert fake.attempts == 2 and len(fake.listens()) == 1
    finally:
        await session.aclose()


def test_a_missing_key_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DEEPGRAM_API_KEY", raising=False)
    with pytest.raises(ProviderError, match="DEEPGRAM_API_KEY"):
        DeepgramSTT()


def test_from_options_builds_the_config_and_rejects_unknown_keys() -> None:
    stt = DeepgramSTT(
        DeepgramSTTConfig.from_options(
            "nova-2",
            {"api_key": "k", "keywords": ["acme:2"], "retry": {"attempts": 5}, "endpointing_ms": 500},
        )
    )
    assert stt.model == "nova-2" and stt.config.keywords == ("acme:2",)
    assert stt.config.retry.attempts == 5 and stt.config.endpointing_ms == 500
    with pytest.raises(ValueError, match=r"deepgram stt: unknown option\(s\)"):
        DeepgramSTTConfig.from_options(None, {"api_key": "k", "endpointing": 300})
