"""A LiveKit room with `rtc.Room`'s interface, driven by a test: no server, real audio.

The caller's microphone is a real `rtc.AudioSource` whose `LocalAudioTrack` stands in for the
remote track the worker subscribes to (an `rtc.AudioStream` reads any track: the loopback of
shared/FINDINGS.md). The agent's published track is kept, so a test can listen to it through
another AudioStream, and its text streams (captions) are recorded. Room events are emitted by
the test: `join()`, `leave()`, `press()`, `set_attributes()`, `close()`, or, for a room connected
through a FakeLiveKitServer (`server=`), by the server's room APIs: `set_metadata()`, `close()`.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from livekit import rtc

from pipeline import Int16Array

ROOM_RATE = 48_000


@dataclass
class Publication:
    sid: str
    kind: int
    track: Any = None
    subscribed: bool = False
    wants_subscription: bool = False

    def set_subscribed(self, subscribed: bool) -> None:
        self.wants_subscription = subscribed


@dataclass
class Participant:
    identity: str
    kind: int = rtc.ParticipantKind.PARTICIPANT_KIND_STANDARD
    attributes: dict[str, str] = field(default_factory=dict)
    track_publications: dict[str, Publication] = field(default_factory=dict)
    disconnect_reason: int | None = None


@dataclass
class TextStream:
    topic: str
    attributes: dict[str, str]
    sender_identity: str | None
    text: str = ""
    closed: bool = False

    async def write(self, text: str) -> None:
        self.text += text

    async def aclose(self) -> None:
        self.closed = True


class LocalParticipant:
    identity = "agent-test"

    def __init__(self, room: TestRoom) -> None:
        self._room = room
        self.published: list[tuple[Any, Any]] = []
        self.text_streams: list[TextStream] = []
        self.streams_changed = asyncio.Event()
        self.published_event = asyncio.Event()

    async def publish_track(self, track: Any, options: Any = None) -> Publication:
        self.published.append((track, options))
        self.published_event.set()
        return Publication(sid=f"TR_agent{len(self.published)}", kind=rtc.TrackKind.KIND_AUDIO, track=track)

    async def stream_text(
        self,
        *,
        topic: str = "",
        attributes: dict[str, str] | None = None,
        sender_identity: str | None = None,
        **_: Any,
    ) -> TextStream:
        stream = TextStream(topic, dict(attributes or {}), sender_identity)
        self.text_streams.append(stream)
        self.streams_changed.set()
        return stream


class Microphone:
    """The caller's side: a real source and track; `play()` paces audio in real time."""

    def __init__(self) -> None:
        self.source = rtc.AudioSource(ROOM_RATE, 1)
        self.track = rtc.LocalAudioTrack.create_audio_track("caller-mic", self.source)

    async def play(self, audio16k: Int16Array) -> None:
        import soxr

        pcm = soxr.resample(audio16k, 16_000, ROOM_RATE).astype(np.int16)
        tick = ROOM_RATE // 100
        for i in range(0, len(pcm), tick):
            chunk = pcm[i : i + tick]
            if len(chunk) < tick:
                chunk = np.pad(chunk, (0, tick - len(chunk)))
            await self.source.capture_frame(rtc.AudioFrame(chunk.tobytes(), ROOM_RATE, 1, tick))

    async def aclose(self) -> None:
        await self.source.aclose()


class TestRoom(rtc.EventEmitter[str]):
    """What the worker's RoomCall uses of `rtc.Room`, with the test holding the other side."""

    __test__ = False  # not a pytest class

    def __init__(self, name: str = "room-1", *, server: Any = None) -> None:
        """server: a FakeLiveKitServer to connect through (connect() then takes the token's
        room name, and the server's metadata updates and room deletion reach this room)."""
        super().__init__()
        self.name = name
        self._server = server
        self.metadata = ""
        self.remote_participants: dict[str, Participant] = {}
        self.local_participant = LocalParticipant(self)
        self.connected_with: tuple[str, str] | None = None
        self.disconnects = 0

    async def connect(self, url: str, token: str, options: Any = None) -> None:
        self.connected_with = (url, token)
        if self._server is not None:
            self.name = self._server.connect_rtc(token, self)

    async def disconnect(self) -> None:
        self.disconnects += 1
        if self._server is not None:
            self._server.disconnect_rtc(self)

    def isconnected(self) -> bool:
        return self.connected_with is not None and not self.disconnects

    # -- the test's side ------------------------------------------------------------------

    def join(self, identity: str = "caller", *, kind: int = rtc.ParticipantKind.PARTICIPANT_KIND_STANDARD,
             attributes: dict[str, str] | None = None, microphone: Microphone | None = None) -> Participant:  # fmt: skip
        p = Participant(identity, kind, dict(attributes or {}))
        self.remote_participants[identity] = p
        self.emit("participant_connected", p)
        if microphone is not None:
            self.publish(p, microphone)
        return p

    def publish(self, p: Participant, microphone: Microphone) -> None:
        pub = Publication(sid=f"TR_{p.identity}", kind=rtc.TrackKind.KIND_AUDIO)
        p.track_publications[pub.sid] = pub
        self.emit("track_published", pub, p)
        # the worker asks to subscribe; the server then sends the track
        pub.track, pub.subscribed = _SidTrack(microphone.track, pub.sid), True
        self.emit("track_subscribed", pub.track, pub, p)

    def set_attributes(self, p: Participant, **attributes: str) -> None:
        p.attributes.update(attributes)
        self.emit("participant_attributes_changed", dict(attributes), p)

    def press(self, p: Participant, digits: str) -> None:
        for d in digits:
            self.emit("sip_dtmf_received", rtc.SipDTMF(code=0, digit=d, participant=p))  # type: ignore[arg-type]

    def leave(self, p: Participant, reason: int = rtc.DisconnectReason.CLIENT_INITIATED) -> None:
        p.disconnect_reason = reason
        self.remote_participants.pop(p.identity, None)
        self.emit("participant_disconnected", p)

    def set_metadata(self, metadata: str) -> None:
        old, self.metadata = self.metadata, metadata
        self.emit("room_metadata_changed", old, metadata)

    def close(self, reason: int = rtc.DisconnectReason.ROOM_DELETED) -> None:
        self.emit("disconnected", reason)

    def captions(self, *, track: str | None = None, final: bool | None = None) -> list[TextStream]:
        return [
            s
            for s in self.local_participant.text_streams
            if s.topic == "lk.transcription"
            and (track is None or s.attributes.get("lk.transcribed_track_id") == track)
            and (final is None or (s.attributes.get("lk.transcription_final") == "true") == final)
        ]


class _SidTrack:
    """A local track presented as the subscribed remote one: its own sid, the loopback's handle."""

    def __init__(self, track: rtc.LocalAudioTrack, sid: str) -> None:
        self._track = track
        self.sid = sid
        self.kind = rtc.TrackKind.KIND_AUDIO

    def __getattr__(self, name: str) -> Any:
        return getattr(self._track, name)
