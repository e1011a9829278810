"""Live captions of both sides, published the way LiveKit's client components read them: text
streams on the `lk.transcription` topic, each naming the transcribed track and its segment.

A caller's utterance is one segment: each interim transcript is a stream with
`lk.transcription_final: "false"`, its final one `"true"`, all with the same `lk.segment_id`;
the stream's sender is the caller, so clients put the caption under them. Each agent line is one
final segment from the agent, sent when it has been heard (what an interrupted reply got out).
"""

from __future__ import annotations

import asyncio
import uuid
from collections import deque
from typing import Any

import structlog

from pipeline import AgentSpeech, Backchannel, SessionEvent, UserTranscript

TOPIC = "lk.transcription"
TRACK_ID = "lk.transcribed_track_id"
SEGMENT_ID = "lk.segment_id"
FINAL = "lk.transcription_final"

MAX_PENDING = 32
"""Captions waiting to be sent; past this, the oldest interim ones are dropped (finals never:
a later interim of the same utterance says more anyway)."""

log = structlog.get_logger("voicerun.captions")


class Captions:
    """An observer of a Call (`on_event`) that sends captions through `participant`, the agent's
    `rtc.LocalParticipant`, in order, from a task of its own; `aclose()` sends what is left."""

    def __init__(
        self, participant: Any, *, caller_identity: str, caller_track: str, agent_track: str
    ) -> None:
        self._participant = participant
        self._caller = caller_identity
        self._caller_track = caller_track
        self._agent_track = agent_track
        self._segment: str | None = None
        self._pending: deque[tuple[str, dict[str, str], str | None, bool]] = deque()
        self._wake = asyncio.Event()
        self._closing = False
        self._sender = asyncio.ensure_future(self._send_all())
        self.sent = 0
        self.dropped = 0

    def on_event(self, ev: SessionEvent) -> None:
        if isinstance(ev, UserTranscript) and ev.text:
            if self._segment is None:
                self._segment = f"caller-{uuid.uuid4().hex[:12]}"
            self._queue(ev.text, self._caller_track, self._segment, ev.final, self._caller)
            if ev.final:
                self._segment = None
        elif isinstance(ev, Backchannel):
            self._segment = None  # the utterance was a backchannel: its interim captions end there
        elif isinstance(ev, AgentSpeech) and ev.text:
            self._queue(ev.text, self._agent_track, f"agent-{uuid.uuid4().hex[:12]}", True, None)

    def _queue(self, text: str, track: str, segment: str, final: bool, sender: str | None) -> None:
        attributes = {TRACK_ID: track, SEGMENT_ID: segment, FINAL: "true" if final else "false"}
        if len(self._pending) >= MAX_PENDING:
            for i, item in enumerate(self._pending):
                if not item[3]:
                    del self._pending[i]
                    self.dropped += 1
                    break
        self._pending.append((text, attributes, sender, final))
        self._wake.set()

    async def _send_all(self) -> None:
        while True:
            while self._pending:
                text, attributes, sender, _ = self._pending.popleft()
                try:
                    writer = await self._participant.stream_text(
                        topic=TOPIC, attributes=attributes, sender_identity=sender
                    )
                    await writer.write(text)
                    await writer.aclose()
                    self.sent += 1
                except Exception as exc:
                    # A caption is not worth the call: say so once per failure and go on.
                    log.warning("caption_not_sent", error=f"{type(exc).__name__}: {exc}")
            if self._closing:
                return
            self._wake.clear()
            await self._wake.wait()

    async def aclose(self, timeout_s: float = 2.0) -> None:
        """Send what is queued (the call's last lines), for `timeout_s` at most, then stop."""
        self._closing = True
        self._wake.set()
        try:
            await asyncio.wait_for(asyncio.shield(self._sender), timeout_s)
        except TimeoutError:
            log.warning("captions_not_flushed", pending=len(self._pending))
        finally:
            self._sender.cancel()
            await asyncio.gather(self._sender, return_exceptions=True)
