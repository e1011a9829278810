"""Cloud STT: Deepgram streaming (nova-3) over one websocket per call.

The socket opens in connect(), when the call starts, so the first utterance pays no handshake.
Three things share it, each with one owner: push() appends to the utterance's buffer and queues
a marker for the sender task (the only writer: audio, Finalize, KeepAlive, CloseStream, replays);
the receive task owns the connection (opening, reconnecting, reading results).

Results are matched to utterances by stream time: Deepgram stamps each result with the
start and duration of the audio it covers on this connection, and we know where each utterance's
audio sits in that stream. An utterance is complete when a final result covers all of its audio
(the `from_finalize` answer to our Finalize, or an earlier final when Deepgram had nothing
left to flush: it does not always answer a Finalize).

If the socket drops, the receive task reconnects (same RetryPolicy as every provider) and the
sender replays, from the buffers, the whole audio of every utterance without a final
transcript yet, dropping the finals it had: no words lost and none doubled.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, assert_never, cast

import structlog
import websockets.exceptions

from .._audio import SAMPLE_RATE
from .._errors import ProviderError
from .._stt import STT, InterimCallback, STTSession, Transcript, Utterance
from ._options import config_kwargs
from ._resilience import RetryPolicy, Timeouts, stream_with_retries

if TYPE_CHECKING:
    import httpx
    from deepgram import AsyncDeepgramClient
    from deepgram.listen.v1.socket_client import AsyncV1SocketClient
    from deepgram.listen.v1.types.listen_v1results import ListenV1Results

__all__ = ["DeepgramSTT", "DeepgramSTTConfig", "DeepgramSTTSession", "DeepgramSTTStats", "DeepgramUtterance"]

PROVIDER = "deepgram"
API_KEY_ENV = "DEEPGRAM_API_KEY"
log = structlog.get_logger("voicerun.pipeline.deepgram")

_BYTES_PER_S = SAMPLE_RATE * 2
# Deepgram rounds times to milliseconds.
_TIME_SLACK_S = 0.001


@dataclass(frozen=True, slots=True)
class DeepgramSTTConfig:
    model: str = "nova-3"
    language: str = "en"
    keyterms: tuple[str, ...] = ()
    """Nova-3 keyterm prompting: words or phrases to favour (query `keyterm`)."""
    keywords: tuple[str, ...] = ()
    """Keyword boosting of older models, `word:intensifier` (query `keywords`)."""
    endpointing_ms: int = 300
    """Silence after which Deepgram marks a result speech_final; our VAD still decides the turn."""
    smart_format: bool = True
    """Deepgram's formatting: capitals, punctuation, numerals, dates (query `smart_format`)."""
    punctuate: bool = True
    """Punctuation and capitals alone (query `punctuate`); without either the text is lower-case."""
    api_key: str | None = None
    """None reads DEEPGRAM_API_KEY."""
    base_url: str | None = None
    """Websocket origin such as ws://127.0.0.1:8080; None is Deepgram's production endpoint."""
    keepalive_s: float = 5.0
    """Send KeepAlive after this long with nothing sent (Deepgram closes a silent socket at 10 s)."""
    send_queue_frames: int = 250
    """Frames queued for the sender (5 s of 20 ms frames). A full queue is a counted fault; the
    audio stays in the utterance buffer and is sent with the next frame that fits."""
    max_utterance_s: float = 120.0
    """Audio buffered per utterance for replay; frames past it are refused, logged and counted."""
    timeouts: Timeouts = field(default_factory=Timeouts)
    """connect_s bounds each connection attempt; first_byte_s bounds finalize() -> final result."""
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    """Connection attempts (also after a drop), and drops in a row without a result before the
    session gives up."""

    def __post_init__(self) -> None:
        for name in ("smart_format", "punctuate"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"deepgram {name} must be true or false, got {getattr(self, name)!r}")
        if self.endpointing_ms < 10:
            raise ValueError(f"deepgram endpointing_ms must be >= 10, got {self.endpointing_ms}")
        if self.keepalive_s <= 0:
            raise ValueError(f"deepgram keepalive_s must be > 0, got {self.keepalive_s}")
        if self.send_queue_frames < 1:
            raise ValueError(f"deepgram send_queue_frames must be >= 1, got {self.send_queue_frames}")
        if self.max_utterance_s <= 0:
            raise ValueError(f"deepgram max_utterance_s must be > 0, got {self.max_utterance_s}")

    @classmethod
    def from_options(cls, model: str | None, options: Mapping[str, Any]) -> DeepgramSTTConfig:
        """A config from a workflow's provider spec; unknown keys are an error."""
        opts = config_kwargs("deepgram stt", cls, options)
        for name in ("keyterms", "keywords"):
            if name in opts:
                opts[name] = tuple(opts[name])
        if model:
            opts["model"] = model
        return cls(**opts)


def _flag(on: bool) -> str:
    return "true" if on else "false"


def resolve_api_key(api_key: str | None) -> str:
    key = api_key if api_key is not None else os.environ.get(API_KEY_ENV)
    if not key:
        raise ProviderError(
            f"deepgram needs an API key: set {API_KEY_ENV} or the api_key option", provider=PROVIDER
        )
    return key


def make_client(
    api_key: str, base_url: str | None, http: httpx.AsyncClient | None = None
) -> AsyncDeepgramClient:
    """base_url: one origin for both REST and websockets (http:// or ws://, either works).
    http: the HTTP client for REST requests (the SDK makes its own otherwise)."""
    from deepgram import AsyncDeepgramClient, DeepgramClientEnvironment

    extra: dict[str, Any] = {} if http is None else {"httpx_client": http}
    if base_url is None:
        return AsyncDeepgramClient(api_key=api_key, **extra)
    origin = base_url.rstrip("/")
    rest = "http" + origin.removeprefix("ws") if origin.startswith("ws") else origin
    ws = "ws" + origin.removeprefix("http") if origin.startswith("http") else origin
    env = DeepgramClientEnvironment(base=rest, production=ws, agent=ws, agent_rest=rest)
    return AsyncDeepgramClient(api_key=api_key, environment=env, **extra)


def map_connect_error(exc: Exception, what: str) -> ProviderError:
    """One mapping of SDK and websocket failures at connect time. Never str(ApiError): it
    carries the request headers."""
    from deepgram.core.api_error import ApiError

    if isinstance(exc, ApiError):
        status = exc.status_code
        if status in (401, 403):
            return ProviderError(
                f"deepgram {what} rejected the API key (HTTP {status})", provider=PROVIDER, retryable=False
            )
        retryable = status is None or status in (408, 429) or status >= 500
        return ProviderError(
            f"deepgram {what} refused the connection (HTTP {status})", provider=PROVIDER, retryable=retryable
        )
    return ProviderError(
        f"deepgram {what} connection failed: {type(exc).__name__}: {exc}", provider=PROVIDER, retryable=True
    )


@dataclass(slots=True)
class DeepgramSTTStats:
    """What one call's socket did (tests, logs, metering)."""

    connections: int = 0
    reconnects: int = 0
    replayed_frames: int = 0
    queue_full: int = 0
    """Frames that did not fit the send queue (sent later from the buffer, never dropped)."""
    refused_frames: int = 0
    """Frames past max_utterance_s: not sent."""
    keepalives: int = 0
    malformed_frames: int = 0


@dataclass(slots=True, eq=False)
class _Conn:
    sock: AsyncV1SocketClient
    gen: int
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    final_end_s: float = 0.0
    """Stream time up to which Deepgram has sent final results."""


@dataclass(frozen=True, slots=True, eq=False)
class _Media:
    utterance: DeepgramUtterance
    upto: int
    """Send the utterance's frames up to this index (any earlier unsent ones too)."""


@dataclass(frozen=True, slots=True, eq=False)
class _Finalize:
    utterance: DeepgramUtterance


class _KeepAlive:
    pass


class _CloseStream:
    pass


class _Reconnected:
    """Wakes an idle sender so it replays at once on the new socket."""


_Item = _Media | _Finalize | _KeepAlive | _CloseStream | _Reconnected


class DeepgramUtterance(Utterance):
    """One utterance: frames buffered for replay; results matched by stream time."""

    def __init__(self, session: DeepgramSTTSession, on_interim: InterimCallback | None) -> None:
        self._session = session
        self._on_interim = on_interim
        self._max_bytes = int(session.config.max_utterance_s * _BYTES_PER_S)
        self.frames: list[bytes] = []
        self.buffered_bytes = 0
        self.sent_bytes = 0
        """Audio sent for this utterance over every connection, replays included (what is billed)."""
        # Where this utterance sits on connection `gen`: frames sent, and its span in stream seconds.
        self.gen = 0
        self.sent = 0
        self.stream_start_s: float | None = None
        self.stream_end_s: float | None = None
        """Stream time at which Finalize went out on connection `gen`; None before."""
        self.finalize_requested = False
        self.finals: list[str] = []
        self.closed = False
        self.cancelled = False
        self.queue_full = 0
        self.done: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        # An utterance failed by the session but never finalized must not warn at GC.
        self.done.add_done_callback(lambda f: f.cancelled() or f.exception())
        self._result: Transcript | None = None

    @property
    def text(self) -> str:
        return " ".join(self.finals)

    # -- audio path: O(1), never waits ---------------------------------------------------------

    def push(self, pcm: bytes, voiced: bool) -> None:
        if self.closed:
            return
        if self.buffered_bytes + len(pcm) > self._max_bytes:
            self._session.stats.refused_frames += 1
            if self._session.stats.refused_frames == 1:
                log.warning(
                    "deepgram_utterance_too_long", max_utterance_s=self._session.config.max_utterance_s
                )
            return
        self.frames.append(pcm)
        self.buffered_bytes += len(pcm)
        self._session.enqueue_media(self)

    # -- results (receive task) ------------------------------------------------------------------

    def on_result(self, text: str, is_final: bool) -> None:
        if is_final and text:
            self.finals.append(text)
        if self._on_interim is None or self.closed or not text:
            return
        self._on_interim(" ".join([*self.finals, text]) if not is_final else self.text)

    def resolve(self) -> None:
        if not self.done.done():
            self.done.set_result(self.text)

    def fail(self, exc: ProviderError) -> None:
        if not self.done.done():
            self.done.set_exception(exc)

    # -- end of utterance ------------------------------------------------------------------------

    async def finalize(self) -> Transcript:
        if self.cancelled:
            raise ProviderError("deepgram utterance was cancelled before finalize()", provider=PROVIDER)
        if self._result is not None:
            return self._result
        self.closed = True
        if not self.frames and not self.done.done():
            self._session.forget(self)
            self._result = Transcript("", 0.0)
            return self._result
        session = self._session
        wait_s = session.config.timeouts.first_byte_s
        try:
            async with asyncio.timeout(wait_s):
                if not self.done.done():
                    await session.queue.put(_Finalize(self))
                text = await asyncio.shield(self.done)
        except TimeoutError as exc:
            session.forget(self)
            raise ProviderError(
                f"deepgram: no final result within {wait_s:g} s of finalize()",
                provider=PROVIDER,
                retryable=True,
            ) from exc
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if self.cancelled and task is not None and not task.cancelling():
                # cancel() was called while we waited: that is the utterance's end, not ours.
                raise ProviderError(
                    "deepgram utterance was cancelled during finalize()", provider=PROVIDER
                ) from None
            self.cancel()
            raise
        except ProviderError:
            session.forget(self)
            raise
        self._result = Transcript(text, self.sent_bytes / _BYTES_PER_S)
        self.frames = []
        return self._result

    def cancel(self) -> None:
        if self.cancelled or self._result is not None:
            return
        self.cancelled = True
        self.closed = True
        self.done.cancel()
        self._session.forget(self)
        self.frames = []


class DeepgramSTTSession(STTSession):
    """Per call: one websocket, a receive task that owns it and a sender task that writes to it."""

    def __init__(self, client: AsyncDeepgramClient, config: DeepgramSTTConfig) -> None:
        self._client = client
        self.config = config
        self.stats = DeepgramSTTStats()
        self.queue: asyncio.Queue[_Item] = asyncio.Queue(config.send_queue_frames)
        self._open: list[DeepgramUtterance] = []
        """Utterances without a result yet, in the order they began."""
        self._conn: _Conn | None = None
        self._ready = asyncio.Event()
        self._gen = 0
        self._replayed_gen = 0
        self._stream_bytes = 0
        self._last_streamed: DeepgramUtterance | None = None
        self._failed: ProviderError | None = None
        self._closing = False
        self._receiver: asyncio.Task[None] | None = None
        self._sender: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Open the socket (with retries) and start the tasks; raises ProviderError if it cannot."""
        opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._receiver = asyncio.create_task(self._receive_loop(opened), name="deepgram-receive")
        self._sender = asyncio.create_task(self._send_loop(), name="deepgram-send")
        try:
            await opened
        except BaseException:
            await self._stop_tasks()
            raise

    def begin(self, on_interim: InterimCallback | None = None) -> DeepgramUtterance:
        utterance = DeepgramUtterance(self, on_interim)
        if self._failed is not None:
            utterance.fail(self._failed)
        else:
            self._open.append(utterance)
        return utterance

    def enqueue_media(self, utterance: DeepgramUtterance) -> None:
        if self._failed is not None:
            return
        try:
            self.queue.put_nowait(_Media(utterance, len(utterance.frames)))
        except asyncio.QueueFull:
            # Not dropped: the frame stays in the buffer and goes out with the next marker.
            utterance.queue_full += 1
            self.stats.queue_full += 1
            if utterance.queue_full == 1:
                log.warning("deepgram_send_queue_full", queue_frames=self.config.send_queue_frames)

    def forget(self, utterance: DeepgramUtterance) -> None:
        if utterance in self._open:
            self._open.remove(utterance)

    async def aclose(self) -> None:
        """Send CloseStream, let Deepgram flush and close, then stop the tasks."""
        if self._closing:
            return
        self._closing = True
        for utterance in list(self._open):
            utterance.cancel()
        try:
            if self._conn is not None and self._receiver is not None and not self._receiver.done():
                async with asyncio.timeout(self.config.timeouts.connect_s):
                    await self.queue.put(_CloseStream())
                    await asyncio.wait([self._receiver])
        except TimeoutError:
            log.warning("deepgram_close_timeout", timeout_s=self.config.timeouts.connect_s)
        finally:
            await self._stop_tasks()

    async def _stop_tasks(self) -> None:
        tasks = [t for t in (self._sender, self._receiver) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _fail(self, exc: ProviderError) -> None:
        self._failed = exc
        for utterance in self._open:
            utterance.fail(exc)
        self._open.clear()

    # -- receive task: owns the connection --------------------------------------------------------

    async def _open_socket(self) -> AsyncIterator[AsyncV1SocketClient]:
        cfg = self.config
        try:
            async with self._client.listen.v1.connect(
                model=cfg.model,
                language=cfg.language,
                encoding="linear16",
                sample_rate=SAMPLE_RATE,
                channels=1,
                interim_results="true",
                endpointing=cfg.endpointing_ms,
                vad_events="true",
                smart_format=_flag(cfg.smart_format),
                punctuate=_flag(cfg.punctuate),
                keyterm=list(cfg.keyterms) or None,
                keywords=list(cfg.keywords) or None,
            ) as sock:
                yield sock
        except ProviderError:
            raise
        except Exception as exc:
            raise map_connect_error(exc, "listen") from exc

    async def _receive_loop(self, opened: asyncio.Future[None]) -> None:
        # A connection is a one-item stream: stream_with_retries retries until the socket opens,
        # and closing the stream closes the socket.
        t = self.config.timeouts
        connect_timeouts = Timeouts(connect_s=t.connect_s, first_byte_s=t.connect_s, total_s=t.total_s)
        drops = 0
        try:
            while True:
                # stream_with_retries is an async generator: it can be closed.
                stream = cast(
                    "AsyncGenerator[AsyncV1SocketClient, None]",
                    stream_with_retries(
                        self._open_socket,
                        provider=PROVIDER,
                        timeouts=connect_timeouts,
                        retry=self.config.retry,
                    ),
                )
                try:
                    sock = await anext(stream)
                    self._gen += 1
                    conn = _Conn(sock, self._gen)
                    self._conn = conn
                    self._ready.set()
                    self.stats.connections += 1
                    if not opened.done():
                        opened.set_result(None)
                    else:
                        with contextlib.suppress(asyncio.QueueFull):  # a busy sender replays anyway
                            self.queue.put_nowait(_Reconnected())
                    progressed = await self._receive(conn)
                finally:
                    self._ready.clear()
                    self._conn = None
                    await stream.aclose()
                if self._closing:
                    return
                drops = 0 if progressed else drops + 1
                if drops >= self.config.retry.attempts:
                    raise ProviderError(
                        f"deepgram socket dropped {drops} times in a row without a result", provider=PROVIDER
                    )
                self.stats.reconnects += 1
                log.warning("deepgram_reconnecting", open_utterances=len(self._open), drops=drops)
        except asyncio.CancelledError:
            raise
        except StopAsyncIteration:  # stream_with_retries ended without a socket: cannot happen
            self._report(
                ProviderError("deepgram connection ended before it opened", provider=PROVIDER), opened
            )
        except ProviderError as exc:
            self._report(exc, opened)
        except Exception as exc:  # top of the task: log and report
            log.exception("deepgram_receive_failed")
            self._report(ProviderError(f"deepgram: {type(exc).__name__}: {exc}", provider=PROVIDER), opened)

    def _report(self, exc: ProviderError, opened: asyncio.Future[None]) -> None:
        if not opened.done():
            opened.set_exception(exc)
        else:
            log.error("deepgram_session_failed", error=str(exc))
        self._fail(exc)

    async def _receive(self, conn: _Conn) -> bool:
        """Read results until the socket closes; True if any result arrived."""
        from deepgram.listen.v1.types.listen_v1error import ListenV1Error
        from deepgram.listen.v1.types.listen_v1results import ListenV1Results

        progressed = False
        try:
            while True:
                try:
                    message = await conn.sock.recv()
                except json.JSONDecodeError as exc:
                    self._on_malformed(conn, f"not JSON: {exc.doc[:60]!r}")
                    continue
                if isinstance(message, ListenV1Results):
                    progressed = True
                    self._on_results(conn, message)
                elif isinstance(message, ListenV1Error):
                    log.warning(
                        "deepgram_error_message", variant=message.variant, description=message.description
                    )
                # Metadata, SpeechStarted, UtteranceEnd: our VAD and the Finalize answers cover them.
        except websockets.exceptions.ConnectionClosed as exc:
            if not self._closing:
                log.warning("deepgram_socket_closed", code=exc.rcvd.code if exc.rcvd else None)
            return progressed
        finally:
            conn.ended.set()

    def _on_malformed(self, conn: _Conn, problem: str) -> None:
        # A frame we cannot read may have been a transcript: the utterances whose audio is on this
        # socket cannot be trusted complete, so they fail loudly rather than lose words quietly.
        # The call goes on; the next utterance starts clean.
        self.stats.malformed_frames += 1
        log.warning("deepgram_malformed_frame", problem=problem)
        error = ProviderError(f"deepgram sent a frame it cannot read ({problem})", provider=PROVIDER)
        for utterance in [u for u in self._open if u.gen == conn.gen and u.stream_start_s is not None]:
            utterance.fail(error)
            self._open.remove(utterance)

    def _on_results(self, conn: _Conn, result: ListenV1Results) -> None:
        try:
            alternatives = result.channel.alternatives
            text = alternatives[0].transcript.strip() if alternatives else ""
            start, duration = float(result.start), float(result.duration)
        except (AttributeError, TypeError, ValueError, IndexError) as exc:
            self._on_malformed(conn, f"a result without a readable transcript and time: {exc}")
            return
        is_final = bool(result.is_final)
        end = start + duration
        middle = start + duration / 2
        owner = next(
            (
                u
                for u in self._open
                if u.gen == conn.gen
                and u.stream_start_s is not None
                and middle >= u.stream_start_s - _TIME_SLACK_S
                and (u.stream_end_s is None or middle < u.stream_end_s)
            ),
            None,
        )
        if owner is not None:
            owner.on_result(text, is_final)
        elif text:
            log.debug("deepgram_result_unmatched", start=start, duration=duration, final=is_final)
        if is_final:
            conn.final_end_s = max(conn.final_end_s, end)
            self._resolve_covered(conn.gen, end)

    def _resolve_covered(self, gen: int, end_s: float) -> None:
        for utterance in list(self._open):
            if (
                utterance.gen == gen
                and utterance.stream_end_s is not None
                and utterance.stream_end_s <= end_s + _TIME_SLACK_S
            ):
                utterance.resolve()
                self._open.remove(utterance)

    # -- sender task: the only writer -------------------------------------------------------------

    async def _send_loop(self) -> None:
        try:
            while True:
                item: _Item
                try:
                    async with asyncio.timeout(self.config.keepalive_s):
                        item = await self.queue.get()
                except TimeoutError:
                    item = _KeepAlive()
                await self._deliver(item)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # top of the task: log and report
            log.exception("deepgram_send_failed")
            self._fail(ProviderError(f"deepgram sender: {type(exc).__name__}: {exc}", provider=PROVIDER))

    async def _deliver(self, item: _Item) -> None:
        while True:
            if isinstance(item, _KeepAlive | _CloseStream | _Reconnected) and self._conn is None:
                return  # nothing to keep alive or close
            await self._ready.wait()
            conn = self._conn
            assert conn is not None
            try:
                if conn.gen != self._replayed_gen:
                    await self._replay(conn)
                await self._send_item(conn, item)
                return
            except websockets.exceptions.ConnectionClosed:
                # The receive task sees the same close and reconnects; the replay then resends.
                await conn.ended.wait()

    async def _send_item(self, conn: _Conn, item: _Item) -> None:
        if isinstance(item, _Media):
            u = item.utterance
            if u.cancelled or u.done.done():
                return
            await self._send_frames(conn, u, item.upto)
        elif isinstance(item, _Finalize):
            u = item.utterance
            if u.cancelled or u.done.done() or (u.gen == conn.gen and u.stream_end_s is not None):
                return
            u.finalize_requested = True
            await self._send_frames(conn, u, len(u.frames))
            await self._send_finalize(conn, u)
        elif isinstance(item, _KeepAlive):
            await conn.sock.send_keep_alive()
            self.stats.keepalives += 1
        elif isinstance(item, _CloseStream):
            await conn.sock.send_close_stream()
        elif isinstance(item, _Reconnected):
            pass  # _deliver has replayed
        else:
            assert_never(item)

    async def _send_frames(self, conn: _Conn, u: DeepgramUtterance, upto: int) -> None:
        prev = self._last_streamed
        if prev is not None and prev is not u and prev.gen == conn.gen and prev.stream_end_s is None:
            # A cancelled utterance never finalized: close its span so its results stay its own.
            await self._send_finalize(conn, prev)
        if u.gen != conn.gen:
            u.gen, u.sent, u.stream_start_s, u.stream_end_s = conn.gen, 0, None, None
        self._last_streamed = u
        while u.sent < upto:
            frame = u.frames[u.sent]
            if u.stream_start_s is None:
                u.stream_start_s = self._stream_bytes / _BYTES_PER_S
            await conn.sock.send_media(frame)
            u.sent += 1
            u.sent_bytes += len(frame)
            self._stream_bytes += len(frame)

    async def _send_finalize(self, conn: _Conn, u: DeepgramUtterance) -> None:
        await conn.sock.send_finalize()
        u.stream_end_s = self._stream_bytes / _BYTES_PER_S
        if (
            u.stream_start_s is None
            or u.stream_start_s >= u.stream_end_s
            or conn.final_end_s + _TIME_SLACK_S >= u.stream_end_s
        ):
            # Nothing of it is on this socket, or Deepgram already finalized all of it (it does
            # not always answer a Finalize with nothing left to flush).
            u.resolve()
            self.forget(u)

    async def _replay(self, conn: _Conn) -> None:
        """First writes on a new connection: every utterance still waiting, from its first frame."""
        self._stream_bytes = 0
        self._last_streamed = None
        replayed = 0
        for u in list(self._open):
            if u.gen == 0:
                continue  # nothing of it was sent yet: the queue brings it
            u.finals.clear()
            u.gen, u.sent, u.stream_start_s, u.stream_end_s = conn.gen, 0, None, None
            await self._send_frames(conn, u, len(u.frames))
            replayed += u.sent
            if u.finalize_requested:
                await self._send_finalize(conn, u)
        self._replayed_gen = conn.gen
        if replayed:
            self.stats.replayed_frames += replayed
            log.info(
                "deepgram_replayed", frames=replayed, audio_s=round(self._stream_bytes / _BYTES_PER_S, 2)
            )


class DeepgramSTT(STT):
    name = "deepgram"

    def __init__(self, config: DeepgramSTTConfig | None = None) -> None:
        self.config = config if config is not None else DeepgramSTTConfig()
        self.model = self.config.model
        self._client = make_client(resolve_api_key(self.config.api_key), self.config.base_url)

    async def connect(self) -> DeepgramSTTSession:
        session = DeepgramSTTSession(self._client, self.config)
        await session.start()
        return session
