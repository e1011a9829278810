"""One dispatched call in a LiveKit room: find the caller, wire the room's audio to a Call, run it,
caption it, end it when the room says so, and leave the room.

The room is anything with `rtc.Room`'s interface (`on`/`off` events, `connect`, `disconnect`,
`remote_participants`, `local_participant`, `name`); the worker passes a real one, the tests one
they drive. Everything here runs on the worker's call loop.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import structlog
from livekit import rtc

from metering import CallStatus, Meter, RecordingStored
from pipeline import Clock
from workflows import Workflow, WorkflowRegistry, keypad_turn

from ._call import DISCONNECTED, ENDED_BY_API, Call, CallRecord
from ._call_recording import CallRecorder, save_recording
from ._captions import Captions
from ._dispatch import Dispatch
from ._providers import ProviderPool
from ._recording_store import RecordingStore
from ._room_audio import RoomCaller, RoomSink
from ._rtc_events import bind_stream

log = structlog.get_logger("voicerun.room")

CALLER_JOIN_TIMEOUT_S = 60.0
"""A dispatched room with no caller after this long fails: nobody came (status failed)."""
ANSWER_TIMEOUT_S = 90.0
"""A dialled phone still ringing after this long counts as not answered."""
FIRST_AUDIO_WAIT_S = 5.0
"""The greeting waits for the caller's first audio (they are listening then), this long at most."""
END_REASON_KEY = "voicerun.end_reason"
"""In the room's metadata (JSON): the control API's reason for ending the call."""
EXTERNAL_END_REASONS = frozenset({ENDED_BY_API})

KEYPAD_GAP_S = 1.0
TENANT_KEYS_TTL_S = 60.0
"""Keys pressed with gaps shorter than this are one keypad turn (or up to #)."""

_KIND = rtc.ParticipantKind
_NOT_CALLERS = {_KIND.PARTICIPANT_KIND_AGENT, _KIND.PARTICIPANT_KIND_EGRESS}
_REASON = rtc.DisconnectReason

SIP_OUTCOMES: dict[int, tuple[CallStatus, str]] = {
    _REASON.USER_UNAVAILABLE: ("no_answer", "no_answer"),
    _REASON.USER_REJECTED: ("busy", "busy"),
    _REASON.SIP_TRUNK_FAILURE: ("failed", "sip_trunk_failure"),
}
"""Why a dialled SIP participant left before answering -> the call's status and reason."""


class RoomServices(Protocol):
    """What a call asks of the LiveKit server besides the room (livekit-api's services)."""

    async def delete_room(self, room: str) -> None: ...

    async def transfer(self, room: str, identity: str, number: str) -> None: ...


@dataclass
class CallHost:
    """What a worker process shares between its calls."""

    registry: WorkflowRegistry
    providers: ProviderPool
    clock: Clock
    meter: Meter | None = None
    services: RoomServices | None = None
    recordings: RecordingStore | None = None
    calls: dict[str, RoomCall] = field(default_factory=dict)
    credentials: Callable[[str], Awaitable[Mapping[str, Mapping[str, str]]]] | None = None
    """A tenant's provider credentials (its stored keys), or None: every call uses the process
    environment's."""
    _tenant_pools: dict[str, tuple[float, ProviderPool]] = field(default_factory=dict)

    async def providers_for(self, tenant: str | None) -> ProviderPool:
        """The pool a call of `tenant` uses: the tenant's own keys when it stored any, else the
        process's. A tenant's pool is rebuilt when its keys are a minute old (a key changed
        through the API reaches new calls within TENANT_KEYS_TTL_S)."""
        if tenant is None or self.credentials is None:
            return self.providers
        now = self.clock.now()
        cached = self._tenant_pools.get(tenant)
        if cached is not None and now - cached[0] < TENANT_KEYS_TTL_S:
            return cached[1]
        keys = await self.credentials(tenant)
        if not keys:
            return self.providers
        pool = ProviderPool(self.providers.registry, credentials=keys)
        self._tenant_pools[tenant] = (now, pool)
        if cached is not None:
            self._retired.append(cached[1])  # calls may still use it: closed with the host
        return pool

    _retired: list[ProviderPool] = field(default_factory=list)

    async def aclose(self) -> None:
        for _, pool in self._tenant_pools.values():
            await pool.aclose()
        for pool in self._retired:
            await pool.aclose()

    """The calls running now, by id (drain ends them; the load report counts them)."""


class _RoomWatch:
    """The room's events a call waits on, as awaitables, registered for one call."""

    def __init__(self, room: Any) -> None:
        self.room = room
        self.changed = asyncio.Event()
        """Set on any participant, attribute or track change: waiters re-check the room."""
        self.disconnected: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.left: dict[str, int] = {}
        """Identity -> disconnect reason, for participants who left."""
        self.on_digit: Callable[[str], None] | None = None
        self.on_end: Callable[[str], None] | None = None
        self.ended: str | None = None
        """Why the call was ended from outside before its caller was there (Call.end covers after)."""
        self.seen: dict[str, rtc.RemoteParticipant] = dict(room.remote_participants)
        """Everyone who was in the room since the call began, in order, also those who left."""
        self._handlers: list[tuple[str, Callable[..., None]]] = []
        for event, fn in (
            ("participant_connected", self._joined),
            ("participant_attributes_changed", self._changed),
            ("track_published", self._changed),
            ("track_subscribed", self._changed),
            ("participant_disconnected", self._participant_left),
            ("sip_dtmf_received", self._dtmf),
            ("room_metadata_changed", self._room_metadata),
            ("disconnected", self._disconnected),
        ):
            room.on(event, fn)
            self._handlers.append((event, fn))

    def close(self) -> None:
        for event, fn in self._handlers:
            self.room.off(event, fn)

    async def wait_change(self, deadline: float, clock: Clock) -> bool:
        """Until the room changes (True) or the deadline passes (False)."""
        self.changed.clear()
        waiter: asyncio.Future[Any] = asyncio.ensure_future(self.changed.wait())
        timer: asyncio.Future[Any] = asyncio.ensure_future(clock.sleep_until(deadline))
        try:
            done, _ = await asyncio.wait(
                {waiter, timer, self.disconnected}, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            waiter.cancel()
            timer.cancel()
        return timer not in done

    def _changed(self, *_: object) -> None:
        self.changed.set()

    def end(self, reason: str) -> None:
        if self.ended is None:
            self.ended = reason
            if self.on_end is not None:
                self.on_end(reason)
        self.changed.set()

    def _joined(self, participant: rtc.RemoteParticipant) -> None:
        self.seen.setdefault(participant.identity, participant)
        self.changed.set()

    def callers(self) -> list[rtc.RemoteParticipant]:
        for identity, p in self.room.remote_participants.items():
            self.seen.setdefault(identity, p)
        return [p for p in self.seen.values() if p.kind not in _NOT_CALLERS]

    def _participant_left(self, participant: rtc.RemoteParticipant) -> None:
        self.left[participant.identity] = int(participant.disconnect_reason or 0)
        self.changed.set()

    def _room_metadata(self, _old: str, new: str) -> None:
        # The control API ends a call by naming why in the room's metadata, then deleting the
        # room: the worker sees the reason before the deletion (the server keeps their order).
        try:
            reason = json.loads(new).get(END_REASON_KEY) if new else None
        except (ValueError, AttributeError):
            return
        if reason in EXTERNAL_END_REASONS:
            log.info("room_asks_to_end", reason=reason)
            self.end(reason)

    def _dtmf(self, dtmf: rtc.SipDTMF) -> None:
        if self.on_digit is not None and dtmf.digit:
            self.on_digit(dtmf.digit)

    def _disconnected(self, reason: object = 0) -> None:
        if not self.disconnected.done():
            self.disconnected.set_result(int(reason or 0))  # type: ignore[call-overload]
        self.changed.set()


class _Keypad:
    """Collects keys into one turn: up to # or a KEYPAD_GAP_S pause."""

    def __init__(self, call: Call, clock: Clock) -> None:
        self._call = call
        self._clock = clock
        self._digits = ""
        self._timer: asyncio.Task[None] | None = None

    def press(self, digit: str) -> None:
        self._digits += digit
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if digit == "#":
            self.flush()
        else:
            self._timer = asyncio.ensure_future(self._after_gap())

    async def _after_gap(self) -> None:
        await self._clock.sleep_until(self._clock.now() + KEYPAD_GAP_S)
        self._timer = None
        self.flush()

    def flush(self) -> None:
        if self._digits:
            digits, self._digits = self._digits, ""
            log.info("keypad_turn", digits=digits)
            self._call.submit(keypad_turn(digits))

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()


def _sip_status(participant: rtc.RemoteParticipant) -> str | None:
    return (
        participant.attributes.get("sip.callStatus")
        if participant.kind == _KIND.PARTICIPANT_KIND_SIP
        else None
    )


def _audio_track(participant: rtc.RemoteParticipant) -> rtc.Track | None:
    for publication in participant.track_publications.values():
        if publication.kind == rtc.TrackKind.KIND_AUDIO:
            if publication.track is not None:
                return publication.track
            if not publication.subscribed:
                publication.set_subscribed(True)  # audio only: the worker joins without auto-subscribe
    return None


class _FirstFrameFirst:
    """The caller's audio, with its first frame read ahead (the greeting waits for it)."""

    def __init__(self, frames: AsyncIterator[tuple[bytes, float]]) -> None:
        self._frames = frames
        self._first: tuple[bytes, float] | None = None

    async def arrived(self) -> bool:
        try:
            self._first = await anext(self._frames)
        except StopAsyncIteration:
            return False
        return True

    def __aiter__(self) -> _FirstFrameFirst:
        return self

    async def __anext__(self) -> tuple[bytes, float]:
        if self._first is not None:
            first, self._first = self._first, None
            return first
        return await anext(self._frames)


class RoomCall:
    """Runs one dispatched call in `room` (already connected) for `dispatch`."""

    def __init__(
        self,
        room: Any,
        dispatch: Dispatch,
        host: CallHost,
        *,
        workflow: Workflow,
        providers: ProviderPool | None = None,
    ) -> None:
        """providers: the call's tenant's (CallHost.providers_for); default the process's."""
        self.room = room
        self.dispatch = dispatch
        self.host = host
        self.workflow = workflow
        self._caller: rtc.RemoteParticipant | None = None
        self._watch = _RoomWatch(room)
        self._watch.on_end = self._end_call
        self.sink = RoomSink(sample_rate=48_000)
        self._recorder = (
            CallRecorder(host.clock) if dispatch.recording and host.recordings is not None else None
        )
        self._audio: _FirstFrameFirst | None = None
        sink = self._recorder.record_sink(self.sink) if self._recorder is not None else self.sink
        self.call = Call(
            workflow=workflow,
            providers=providers or host.providers,
            caller=self,  # the room's caller audio, once the caller's track is found
            sink=sink,
            clock=host.clock,
            user_data=dispatch.user_data,
            call_id=dispatch.call_id,
            meter=host.meter,
            user_id=dispatch.user_id,
            tenant=dispatch.tenant,
            direction=dispatch.direction,
            metadata=dispatch.metadata,
            max_duration_s=dispatch.max_duration,
            transfer=self._transfer,
        )

    def end(self, reason: str) -> None:
        """End the call (drain, the control API): at once if it runs, and if it is still
        waiting for its caller, it stops waiting and is recorded as not connected."""
        self._watch.end(reason)

    def _end_call(self, reason: str) -> None:
        self.call.end(reason)

    # The Call reads the caller's audio from here, once run() has found the caller's track.
    def __aiter__(self) -> RoomCall:
        return self

    async def __anext__(self) -> tuple[bytes, float]:
        assert self._audio is not None
        return await anext(self._audio)

    async def run(self) -> CallRecord:
        call, host = self.call, self.host
        host.calls[call.id] = self
        structlog.contextvars.bind_contextvars(call_id=call.id, room=self.room.name)
        call.open()
        try:
            return await self._run()
        finally:
            host.calls.pop(call.id, None)
            self._watch.close()
            await self.sink.aclose()

    async def _run(self) -> CallRecord:
        call, clock = self.call, self.host.clock
        outcome = await self._find_caller()
        if outcome is not None:
            status, reason = outcome
            record = call.not_connected(status, reason)
            await self._leave(delete=True)
            return record
        assert self._caller is not None
        caller = self._caller
        track = _audio_track(caller)
        deadline = clock.now() + CALLER_JOIN_TIMEOUT_S
        while track is None and caller.identity not in self._watch.left and self._watch.ended is None:
            if not await self._watch.wait_change(deadline, clock) or self._watch.disconnected.done():
                break
            track = _audio_track(caller)
        if track is None:
            record = call.not_connected("failed", "caller_audio_missing")
            await self._leave(delete=True)
            return record
        stream = bind_stream(rtc.AudioStream(track, sample_rate=16_000, num_channels=1, frame_size_ms=20))
        frames: AsyncIterator[tuple[bytes, float]] = RoomCaller(stream, clock)
        if self._recorder is not None:
            frames = self._recorder.record_caller(frames)
        self._audio = _FirstFrameFirst(frames)
        publication = await self.room.local_participant.publish_track(
            rtc.LocalAudioTrack.create_audio_track("agent-voice", self.sink.source),
            rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE),
        )
        captions = Captions(
            self.room.local_participant,
            caller_identity=caller.identity,
            caller_track=track.sid,
            agent_track=publication.sid,
        )
        keypad = _Keypad(call, clock)
        self._watch.on_digit = keypad.press
        call.observe(captions.on_event)
        ender = asyncio.ensure_future(self._end_when_room_says(caller.identity))
        try:
            try:
                await asyncio.wait_for(self._audio.arrived(), FIRST_AUDIO_WAIT_S)
            except TimeoutError:
                log.info("caller_audio_late", waited_s=FIRST_AUDIO_WAIT_S)
            record = await call.run()
        finally:
            ender.cancel()
            keypad.close()
            await captions.aclose()
            await stream.aclose()
        await self._store_recording(record)
        await self._leave(delete=not self._watch.disconnected.done())
        return record

    async def _find_caller(self) -> tuple[CallStatus, str] | None:
        """Wait for the caller (and, on a dialled phone, the answer); None once they are there,
        else the status and reason the call ends with."""
        clock, watch = self.host.clock, self._watch
        join_deadline = clock.now() + CALLER_JOIN_TIMEOUT_S
        answer_deadline = clock.now() + ANSWER_TIMEOUT_S
        while True:
            if watch.disconnected.done():
                return "failed", "room_closed"
            if watch.ended is not None:
                return "failed", watch.ended
            callers = watch.callers()
            if self._caller is None and callers:
                self._caller = callers[0]
                attributes = self._caller.attributes
                log.info(
                    "caller_joined",
                    identity=self._caller.identity,
                    kind=rtc.ParticipantKind.Name(self._caller.kind),
                    phone_number=attributes.get("sip.phoneNumber"),
                    trunk_number=attributes.get("sip.trunkPhoneNumber"),
                )
            if self._caller is not None and self._caller.identity in watch.left:
                outcome = SIP_OUTCOMES.get(watch.left[self._caller.identity])
                return outcome if outcome is not None else ("failed", "caller_left_before_answer")
            if self._caller is not None:
                status = _sip_status(self._caller)
                if status in (None, "active"):
                    return None
                if status == "hangup":
                    return "failed", "caller_hung_up"
                if not await watch.wait_change(answer_deadline, clock):
                    return "no_answer", "no_answer"
                continue
            if not await watch.wait_change(join_deadline, clock):
                return "failed", "caller_never_joined"

    async def _end_when_room_says(self, identity: str) -> None:
        watch = self._watch
        while True:
            if watch.disconnected.done():
                reason = watch.disconnected.result()
                self.call.end("room_deleted" if reason == _REASON.ROOM_DELETED else DISCONNECTED)
                return
            if identity in watch.left:
                self.call.end("user_ended")
                return
            watch.changed.clear()
            await watch.changed.wait()

    async def _transfer(self, number: str) -> None:
        caller, services = self._caller, self.host.services
        if caller is None or caller.kind != _KIND.PARTICIPANT_KIND_SIP:
            raise RuntimeError("the caller is not on a phone line (not a SIP participant)")
        if services is None:
            raise RuntimeError("this worker has no LiveKit API credentials for SIP transfers")
        log.info("sip_transfer", to=number)
        await services.transfer(self.room.name, caller.identity, number)

    async def _store_recording(self, record: CallRecord) -> None:
        store, recorder = self.host.recordings, self._recorder
        if store is None or recorder is None:
            return
        try:
            location = await save_recording(recorder, store, record.call_id)
        except Exception as exc:
            # The call itself is intact in the ledger; only its recording is missing, said once.
            log.error("recording_not_saved", error=f"{type(exc).__name__}: {exc}")
            return
        log.info("recording_saved", location=location)
        if self.host.meter is not None:
            self.host.meter.report(
                RecordingStored(
                    call_id=record.call_id,
                    location=location,
                    format="flac",
                    duration_s=record.summary.duration_s if record.summary else 0.0,
                    at=datetime.now(UTC),
                )
            )

    async def _leave(self, *, delete: bool) -> None:
        """Delete the room (hangs up a phone caller, frees the room) unless it is gone, then
        disconnect. Best effort: the call is already recorded."""
        services = self.host.services
        if delete and services is not None:
            try:
                await services.delete_room(self.room.name)
            except Exception as exc:
                log.warning("room_not_deleted", error=f"{type(exc).__name__}: {exc}")
        try:
            await self.room.disconnect()
        except Exception as exc:
            log.warning("room_disconnect_failed", error=f"{type(exc).__name__}: {exc}")
