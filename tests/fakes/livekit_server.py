"""A fake LiveKit server on 127.0.0.1: the agent worker websocket and a Twirp stub of the APIs.

It speaks livekit-protocol's protobufs the way livekit-server (pkg/service/agentservice.go,
pkg/agent/worker.go, auth.go, roomservice.go, the SIP service) does, so a real livekit-agents
`AgentServer` and a real livekit-api `LiveKitAPI` talk to it over real sockets:

- `GET /agent`: the same auth middleware as the server (a Bearer JWT, or `?access_token=`; a bad
  header, token, key or signature is a 401, recorded in `refusals`), then a websocket upgrade (a
  plain GET is a 404) that needs `VideoGrants(agent=True)` (401 otherwise). The first message must
  be `register` within 10 s; the answer is a `RegisterWorkerResponse` with an `AW_` worker id.
  Then `UpdateWorkerStatus` (status, load, job count), `AvailabilityResponse`, `UpdateJobStatus`,
  `WorkerPing` (answered with a `WorkerPong`), `MigrateJobRequest` (recorded; the open-source
  server ignores it too) and `SimulateJobRequest` are handled; binary protobuf, or protojson
  text frames for a worker that sends text.
- `dispatch()` is the server's job request: it picks an available worker of that agent name
  (WS_FULL workers are skipped), sends an `AvailabilityRequest`, waits up to 10 s, tries the next
  worker on a refusal, and on acceptance sends a `JobAssignment` with a 1 h participant token
  built like `BuildAgentToken` (and no `url`: the worker joins at its own LIVEKIT_URL).
- `POST /twirp/livekit.<Service>/<Method>`: protobuf or JSON Twirp, the same grants as the real
  services, Twirp JSON errors. Rooms and participants are an in-memory model: a room exists once
  `dispatch()`, CreateRoom, CreateDispatch or `add_room()` made it.

There is no RTC media or signalling. A client the test drives (tests/fakes/room.py's TestRoom,
made with `server=`) can stand in for a connected participant: `connect_rtc()` checks its token as
the server checks a join, and then what the server would signal to it reaches it as the events
`rtc.Room` emits: UpdateRoomMetadata as `room_metadata_changed` (before the request is answered,
as the server's SetMetadata sends the room update at once), DeleteRoom as `disconnected` with
reason ROOM_DELETED. Tests wait with the `wait_for`-style methods
(asyncio events, no polling); bound them with `asyncio.timeout()`.
"""

from __future__ import annotations

import asyncio
import datetime
import secrets
import string
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

import jwt
from aiohttp import WSCloseCode, WSMsgType, web
from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message
from livekit import api, rtc
from livekit.api.access_token import Claims
from livekit.protocol import agent, agent_dispatch, models
from livekit.protocol import room as room_pb
from livekit.protocol import sip as sip_pb

REGISTER_TIMEOUT_S: Final = 10.0
"""livekit-server's RegisterTimeout: an unregistered socket is closed after this."""
AVAILABILITY_TIMEOUT_S: Final = 10.0
"""livekit-server's AssignJobTimeout: how long a worker has to answer an AvailabilityRequest."""
AGENT_TOKEN_TTL: Final = datetime.timedelta(hours=1)
ATTR_AGENT_NAME: Final = "lk.agent_name"
"""Added by the server to the agent's participant attributes (livekit-agents adds lk.agent.name)."""
ATTR_SIP_CALL_ID: Final = "sip.callID"
"""The attribute that makes a participant a SIP call, which TransferSIPParticipant needs."""
ENDED: Final = frozenset({agent.JS_SUCCESS, agent.JS_FAILED})

TWIRP_STATUS: Final = {
    "canceled": 408,
    "unknown": 500,
    "invalid_argument": 400,
    "malformed": 400,
    "deadline_exceeded": 408,
    "not_found": 404,
    "bad_route": 404,
    "already_exists": 409,
    "permission_denied": 403,
    "unauthenticated": 401,
    "resource_exhausted": 429,
    "failed_precondition": 412,
    "aborted": 409,
    "out_of_range": 400,
    "unimplemented": 501,
    "internal": 500,
    "unavailable": 503,
    "dataloss": 500,
}

M = TypeVar("M", bound=Message)


def guid(prefix: str) -> str:
    """An id like livekit's guid.New: a type prefix and 12 random characters."""
    alphabet = string.ascii_letters + string.digits
    return prefix + "".join(secrets.choice(alphabet) for _ in range(12))


def _now_ns() -> int:
    return time.time_ns()


def _clone(msg: M) -> M:
    copy = type(msg)()
    copy.CopyFrom(msg)
    return copy


# -- records --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Refusal:
    """A request refused by the auth middleware or the agent endpoint, as the real server does."""

    path: str
    status: int
    reason: str


@dataclass(eq=False)
class TwirpCall:
    """One Twirp request: the decoded protobuf request and what the stub answered."""

    service: str
    method: str
    request: Message | None
    """None when the body could not be decoded."""
    claims: Claims | None
    content_type: str
    status: int | None = None
    error_code: str | None = None
    response: Message | None = None


@dataclass(eq=False)
class FakeRoom:
    """A room in the fake's model: its info and who is in it (nobody joins by RTC here)."""

    info: models.Room
    participants: dict[str, models.ParticipantInfo] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.info.name


@dataclass(eq=False, repr=False)
class FakeWorker:
    """A registered worker connection, as the server sees it."""

    id: str
    register: agent.RegisterWorkerRequest
    claims: Claims
    _server: FakeLiveKitServer = field(repr=False)
    _ws: web.WebSocketResponse = field(repr=False)
    json_mode: bool = False
    """The worker sent protojson text frames; it is answered the same way."""
    received: list[agent.WorkerMessage] = field(default_factory=list)
    """Every message, the register request first."""
    sent: list[agent.ServerMessage] = field(default_factory=list)
    status_updates: list[agent.UpdateWorkerStatus] = field(default_factory=list)
    status: agent.WorkerStatus = agent.WS_AVAILABLE
    """The last reported status; like the server, a new worker counts as available."""
    load: float = 0.0
    job_count: int = 0
    connected: bool = True
    close_code: int | None = None
    _availability: dict[str, asyncio.Future[agent.AvailabilityResponse]] = field(
        default_factory=dict, repr=False
    )

    def __repr__(self) -> str:
        return (
            f"FakeWorker(id={self.id!r}, agent_name={self.agent_name!r},"
            f" status={agent.WorkerStatus.Name(self.status)}, load={self.load:.2f},"
            f" job_count={self.job_count}, connected={self.connected}, close_code={self.close_code})"
        )

    @property
    def agent_name(self) -> str:
        return self.register.agent_name

    @property
    def namespace(self) -> str:
        return self.register.namespace

    @property
    def job_type(self) -> agent.JobType:
        return self.register.type

    @property
    def version(self) -> str:
        return self.register.version

    @property
    def permissions(self) -> models.ParticipantPermission:
        return self.register.allowed_permissions

    @property
    def running_jobs(self) -> list[JobOutcome]:
        """Jobs assigned to this worker that the server has not seen end."""
        return [j for j in self._server.jobs if j.worker is self and j.state.status not in ENDED]

    def messages(self, kind: str) -> list[agent.WorkerMessage]:
        """The received messages of one kind (`"update_job"`, `"availability"`...)."""
        return [m for m in self.received if m.WhichOneof("message") == kind]

    async def send(self, msg: agent.ServerMessage) -> None:
        """Send any server message (e.g. a `JobTermination`) to the worker."""
        self.sent.append(msg)
        if self.json_mode:
            await self._ws.send_str(json_format.MessageToJson(msg))
        else:
            await self._ws.send_bytes(msg.SerializeToString())
        self._server._changed()

    async def close(self, code: int = WSCloseCode.GOING_AWAY) -> None:
        """Close the connection from the server side (the worker will try to reconnect)."""
        await self._ws.close(code=code)

    async def status_update(
        self, predicate: Callable[[agent.UpdateWorkerStatus], bool], *, after: int = 0
    ) -> agent.UpdateWorkerStatus:
        """The first status update at index `after` or later that matches."""

        def found() -> agent.UpdateWorkerStatus | None:
            return next((u for u in self.status_updates[after:] if predicate(u)), None)

        await self._server.wait_for(lambda: found() is not None)
        update = found()
        assert update is not None
        return update

    async def status_reached(self, status: agent.WorkerStatus, *, after: int = 0) -> agent.UpdateWorkerStatus:
        return await self.status_update(lambda u: u.HasField("status") and u.status == status, after=after)

    async def load_reported(
        self, predicate: Callable[[float], bool] = lambda _: True, *, after: int = 0
    ) -> agent.UpdateWorkerStatus:
        return await self.status_update(lambda u: predicate(u.load), after=after)

    async def disconnected(self) -> int | None:
        """Wait until the connection is gone; the close code the worker sent, if any."""
        await self._server.wait_for(lambda: not self.connected)
        return self.close_code


@dataclass(eq=False, repr=False)
class JobOutcome:
    """A job the fake dispatched: whether a worker took it, and what the worker reported since."""

    job: agent.Job
    """As assigned (its `state` is the server's view), or as requested if nobody took it."""
    _server: FakeLiveKitServer = field(repr=False)
    accepted: bool = False
    reason: str = ""
    """Why it was not accepted: no workers available, a timeout, or terminated by the worker."""
    worker: FakeWorker | None = None
    response: agent.AvailabilityResponse | None = None
    """The accepting worker's answer (identity, name, attributes)."""
    refusals: list[tuple[FakeWorker, agent.AvailabilityResponse]] = field(default_factory=list)
    assignment: agent.JobAssignment | None = None
    updates: list[agent.UpdateJobStatus] = field(default_factory=list)
    """`UpdateJobStatus` messages the worker sent for this job, in order."""
    terminated: bool = False
    """The server sent a `JobTermination` (terminate_job(), or the room was deleted)."""

    def __repr__(self) -> str:
        return (
            f"JobOutcome(id={self.id!r}, room={self.room!r}, accepted={self.accepted},"
            f" reason={self.reason!r}, worker={self.worker.id if self.worker else None!r},"
            f" state={agent.JobStatus.Name(self.state.status)},"
            f" reported={[agent.JobStatus.Name(s) for s in self.reported]})"
        )

    @property
    def id(self) -> str:
        return self.job.id

    @property
    def room(self) -> str:
        return self.job.room.name

    @property
    def token(self) -> str:
        return self.assignment.token if self.assignment is not None else ""

    @property
    def state(self) -> agent.JobState:
        return self.job.state

    @property
    def reported(self) -> list[agent.JobStatus]:
        return [u.status for u in self.updates]

    async def status_reached(self, status: agent.JobStatus) -> agent.UpdateJobStatus:
        """Wait until the worker reports `status` for this job. Fails at once, rather than
        hanging, if the job was never assigned, ended with another status, or its worker left."""

        def settled() -> bool:
            return (
                not self.accepted
                or any(u.status == status or u.status in ENDED for u in self.updates)
                or (self.worker is not None and not self.worker.connected)
            )

        await self._server.wait_for(settled)
        update = next((u for u in self.updates if u.status == status), None)
        if update is None:
            names = [agent.JobStatus.Name(s) for s in self.reported]
            raise AssertionError(
                f"job {self.id} did not reach {agent.JobStatus.Name(status)}: accepted={self.accepted}"
                f" reason={self.reason!r} reported={names}"
                f" worker_connected={self.worker is not None and self.worker.connected}"
            )
        return update


class _Unauthorized(Exception):
    pass


class _TwirpError(Exception):
    def __init__(self, code: str, msg: str, meta: Mapping[str, str] | None = None) -> None:
        super().__init__(f"{code}: {msg}")
        self.code = code
        self.msg = msg
        self.meta = dict(meta or {})


_TwirpHandler = Callable[[Any, Claims | None], Awaitable[Message]]


# -- the server -----------------------------------------------------------------------------------


class FakeLiveKitServer:
    """`async with FakeLiveKitServer() as lk:` serves on `lk.url` until the block ends."""

    def __init__(
        self,
        *,
        api_key: str = "fake-api-key",
        api_secret: str = "fake-api-secret-of-at-least-32-bytes",
        availability_timeout_s: float = AVAILABILITY_TIMEOUT_S,
        register_timeout_s: float = REGISTER_TIMEOUT_S,
        region: str = "local",
    ) -> None:
        self.api_key = api_key
        self.api_secret = api_secret
        self.availability_timeout_s = availability_timeout_s
        self.register_timeout_s = register_timeout_s
        self.server_info = models.ServerInfo(
            edition=models.ServerInfo.Standard,
            version="fake",
            protocol=16,
            agent_protocol=1,
            region=region,
            node_id=guid("ND_"),
        )
        self.workers: list[FakeWorker] = []
        """Every worker that registered, in order, including those gone since."""
        self.refusals: list[Refusal] = []
        self.jobs: list[JobOutcome] = []
        self.rooms: dict[str, FakeRoom] = {}
        self.deleted_rooms: list[FakeRoom] = []
        self.dispatches: list[agent_dispatch.AgentDispatch] = []
        self.twirp_calls: list[TwirpCall] = []
        self.rtc_clients: dict[str, list[Any]] = {}
        """Room name -> the clients connected to it through connect_rtc(), in order."""
        self._scripted: dict[str, list[_TwirpError]] = {}
        self._event = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._sockets: set[web.WebSocketResponse] = set()
        self._runner: web.AppRunner | None = None
        self.port = 0
        self._twirp: dict[tuple[str, str], tuple[type[Message], _TwirpHandler]] = {
            ("RoomService", "CreateRoom"): (room_pb.CreateRoomRequest, self._create_room),
            ("RoomService", "ListRooms"): (room_pb.ListRoomsRequest, self._list_rooms),
            ("RoomService", "DeleteRoom"): (room_pb.DeleteRoomRequest, self._delete_room),
            ("RoomService", "UpdateRoomMetadata"): (
                room_pb.UpdateRoomMetadataRequest,
                self._update_room_metadata,
            ),
            ("RoomService", "ListParticipants"): (
                room_pb.ListParticipantsRequest,
                self._list_participants,
            ),
            ("RoomService", "GetParticipant"): (room_pb.RoomParticipantIdentity, self._get_participant),
            ("RoomService", "RemoveParticipant"): (
                room_pb.RoomParticipantIdentity,
                self._remove_participant,
            ),
            ("SIP", "CreateSIPParticipant"): (
                sip_pb.CreateSIPParticipantRequest,
                self._create_sip_participant,
            ),
            ("SIP", "TransferSIPParticipant"): (
                sip_pb.TransferSIPParticipantRequest,
                self._transfer_sip_participant,
            ),
            ("AgentDispatchService", "CreateDispatch"): (
                agent_dispatch.CreateAgentDispatchRequest,
                self._create_dispatch,
            ),
        }

    @property
    def url(self) -> str:
        """What LIVEKIT_URL would be (livekit-api turns ws:// into http:// itself)."""
        return f"ws://127.0.0.1:{self.port}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- lifecycle -------------------------------------------------------------------------

    async def __aenter__(self) -> FakeLiveKitServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/agent", self._agent_endpoint)
        app.router.add_route("*", "/twirp/livekit.{service}/{method}", self._twirp_endpoint)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", self.port)
        await site.start()
        self._runner = runner
        self.port = runner.addresses[0][1]

    async def aclose(self) -> None:
        """Close worker connections (1001, going away), background dispatches, then the port."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for ws in list(self._sockets):
            await ws.close(code=WSCloseCode.GOING_AWAY, message=b"server shutting down")
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    # -- observing -------------------------------------------------------------------------

    def _changed(self) -> None:
        event, self._event = self._event, asyncio.Event()
        event.set()

    async def wait_for(self, predicate: Callable[[], bool]) -> None:
        """Wait until `predicate()` holds; it is checked after every message and request."""
        while not predicate():
            await self._event.wait()

    async def worker_registered(self, agent_name: str | None = None, *, after: int = 0) -> FakeWorker:
        """The first worker (from index `after` of `workers`) registered with `agent_name`."""

        def found() -> FakeWorker | None:
            return next(
                (w for w in self.workers[after:] if agent_name is None or w.agent_name == agent_name),
                None,
            )

        await self.wait_for(lambda: found() is not None)
        worker = found()
        assert worker is not None
        return worker

    async def refused(self, count: int = 1) -> list[Refusal]:
        """Wait until `count` requests were refused; all refusals so far."""
        await self.wait_for(lambda: len(self.refusals) >= count)
        return list(self.refusals)

    def calls_to(self, method: str) -> list[TwirpCall]:
        return [c for c in self.twirp_calls if c.method == method]

    def job(self, job_id: str) -> JobOutcome:
        return next(j for j in self.jobs if j.id == job_id)

    # -- rooms -----------------------------------------------------------------------------

    def add_room(self, name: str, *, metadata: str = "") -> FakeRoom:
        """The room, created (like CreateRoom) if it does not exist."""
        if name in self.rooms:
            return self.rooms[name]
        now = time.time()
        room = FakeRoom(
            models.Room(
                sid=guid("RM_"),
                name=name,
                empty_timeout=300,
                departure_timeout=20,
                creation_time=int(now),
                creation_time_ms=int(now * 1000),
                metadata=metadata,
            )
        )
        self.rooms[name] = room
        self._changed()
        return room

    def add_participant(
        self,
        room: str,
        identity: str,
        *,
        kind: models.ParticipantInfo.Kind = models.ParticipantInfo.STANDARD,
        name: str = "",
        attributes: Mapping[str, str] | None = None,
    ) -> models.ParticipantInfo:
        """Put a participant in a room (creating the room): what a client joining would do."""
        now = time.time()
        info = models.ParticipantInfo(
            sid=guid("PA_"),
            identity=identity,
            name=name,
            state=models.ParticipantInfo.ACTIVE,
            joined_at=int(now),
            joined_at_ms=int(now * 1000),
            kind=kind,
            attributes=dict(attributes or {}),
        )
        fake_room = self.add_room(room)
        fake_room.participants[identity] = info
        fake_room.info.num_participants = len(fake_room.participants)
        self._changed()
        return info

    def add_sip_participant(
        self, room: str, identity: str, *, phone_number: str = "+15550100", call_id: str | None = None
    ) -> models.ParticipantInfo:
        """A caller as the SIP bridge puts one in a room (kind SIP, sip.* attributes)."""
        return self.add_participant(
            room,
            identity,
            kind=models.ParticipantInfo.SIP,
            name=f"Phone {phone_number}",
            attributes={
                ATTR_SIP_CALL_ID: call_id or guid("SCL_"),
                "sip.phoneNumber": phone_number,
                "sip.callStatus": "active",
            },
        )

    def connect_rtc(self, token: str, client: Any) -> str:
        """`client` joins the room its token grants (what an SDK's connect does, minus the media);
        returns the room's name. The token must be this server's with room_join for a room, as
        for the server's RTC endpoint (PermissionError otherwise). From then on the room's
        metadata updates are `client.set_metadata(metadata)` and its deletion `client.close()`."""
        try:
            claims = api.TokenVerifier(self.api_key, self.api_secret).verify(token)
        except jwt.PyJWTError as exc:
            raise PermissionError(f"invalid token: {exc}") from None
        if claims.video is None or not claims.video.room_join or not claims.video.room:
            raise PermissionError("permissions denied: the token does not grant joining a room")
        room = self.add_room(claims.video.room).name
        self.rtc_clients.setdefault(room, []).append(client)
        self._changed()
        return room

    def disconnect_rtc(self, client: Any) -> None:
        """`client` left its room (its own disconnect): nothing more reaches it."""
        for clients in self.rtc_clients.values():
            if client in clients:
                clients.remove(client)
        self._changed()

    def fail_next(self, method: str, code: str, msg: str, *, meta: Mapping[str, str] | None = None) -> None:
        """Answer the next call to `method` that passes authentication with this Twirp error,
        in place of the service (so nothing changes): a SIP bridge or room node failing."""
        assert code in TWIRP_STATUS, f"not a Twirp error code: {code}"
        self._scripted.setdefault(method, []).append(_TwirpError(code, msg, meta))

    # -- dispatching -----------------------------------------------------------------------

    async def dispatch(
        self,
        *,
        agent_name: str,
        room: str,
        metadata: str = "",
        to: FakeWorker | None = None,
        job_type: agent.JobType = agent.JT_ROOM,
        dispatch_id: str | None = None,
    ) -> JobOutcome:
        """Request a job like the server's JobRequest: offer it to available workers of that
        agent name (the one with running jobs and the highest load first), the next one after a
        refusal, until one accepts. `to` offers it to that worker only, whatever its status.

        Returns once the job is assigned (or not); then wait for its status with
        `status_reached()`."""
        fake_room = self.add_room(room)
        job = agent.Job(
            id=guid("AJ_"),
            dispatch_id=dispatch_id or guid("AD_"),
            type=job_type,
            room=_clone(fake_room.info),
            metadata=metadata,
            agent_name=agent_name,
            state=agent.JobState(status=agent.JS_PENDING),
        )
        outcome = JobOutcome(job=job, _server=self)
        self.jobs.append(outcome)
        self._changed()
        attempted: set[int] = set()
        while True:
            worker = self._select_worker(outcome.job, attempted, to)
            if worker is None:
                outcome.reason = "no workers available"
                break
            attempted.add(id(worker))
            if await self._offer(outcome, worker):
                break
        self._changed()
        return outcome

    def _select_worker(self, job: agent.Job, attempted: set[int], to: FakeWorker | None) -> FakeWorker | None:
        if to is not None:
            return to if id(to) not in attempted and to.connected else None
        selected: FakeWorker | None = None
        max_load = 0.0
        for w in self.workers:
            if id(w) in attempted or not w.connected or w.status != agent.WS_AVAILABLE:
                continue
            if (w.agent_name, w.namespace, w.job_type) != (job.agent_name, job.namespace, job.type):
                continue
            if w.running_jobs and w.load > max_load:
                max_load = w.load
                selected = w
            elif selected is None:
                selected = w
        return selected

    async def _offer(self, outcome: JobOutcome, worker: FakeWorker) -> bool:
        """One AssignJob; True when the dispatch is settled (assigned, terminated or failed),
        False when this worker said it is not available."""
        job = _clone(outcome.job)
        now = _now_ns()
        job.state.worker_id = worker.id
        job.state.updated_at = now
        job.state.started_at = now
        job.state.status = agent.JS_RUNNING  # set before the offer, as the server does
        answer: asyncio.Future[agent.AvailabilityResponse] = asyncio.get_running_loop().create_future()
        worker._availability[job.id] = answer
        try:
            try:
                await worker.send(agent.ServerMessage(availability=agent.AvailabilityRequest(job=job)))
                async with asyncio.timeout(self.availability_timeout_s):
                    response = await answer
            except TimeoutError:
                outcome.reason = "agent worker availability timeout"
                return True
            except ConnectionError:
                outcome.reason = "worker closed"
                return True
        finally:
            worker._availability.pop(job.id, None)
        if response.terminate:
            job.state.ended_at = now
            job.state.status = agent.JS_SUCCESS
            outcome.job = job
            outcome.reason = "terminated by the worker"
            return True
        if not response.available:
            outcome.refusals.append((worker, response))
            return False
        job.state.participant_identity = response.participant_identity
        attributes = dict(response.participant_attributes)
        attributes[ATTR_AGENT_NAME] = worker.agent_name
        assignment = agent.JobAssignment(
            job=job,
            token=self.agent_token(
                room=job.room.name,
                identity=response.participant_identity,
                name=response.participant_name,
                metadata=response.participant_metadata,
                attributes=attributes,
                permissions=worker.permissions,
            ),
        )
        try:
            await worker.send(agent.ServerMessage(assignment=assignment))
        except ConnectionError:
            outcome.reason = "worker closed"
            return True
        outcome.job = job
        outcome.worker = worker
        outcome.response = response
        outcome.assignment = assignment
        outcome.accepted = True
        return True

    def agent_token(
        self,
        *,
        room: str,
        identity: str,
        name: str = "",
        metadata: str = "",
        attributes: Mapping[str, str] | None = None,
        permissions: models.ParticipantPermission | None = None,
    ) -> str:
        """A room token for an agent participant, as livekit-server's BuildAgentToken makes it."""
        perm = permissions or models.ParticipantPermission(
            can_publish=True, can_subscribe=True, can_publish_data=True, can_update_metadata=True
        )
        grants = api.VideoGrants(
            room_join=True,
            agent=True,
            room=room,
            can_subscribe=perm.can_subscribe,
            can_publish=perm.can_publish,
            can_publish_data=perm.can_publish_data,
            hidden=perm.hidden,
            can_update_own_metadata=perm.can_update_metadata,
            can_subscribe_metrics=perm.can_subscribe_metrics,
        )
        return (
            api.AccessToken(self.api_key, self.api_secret)
            .with_grants(grants)
            .with_identity(identity)
            .with_name(name)
            .with_kind("agent")
            .with_ttl(AGENT_TOKEN_TTL)
            .with_metadata(metadata)
            .with_attributes(dict(attributes or {}))
            .to_jwt()
        )

    async def terminate_job(self, outcome: JobOutcome) -> None:
        """Send `JobTermination` (what deleting its dispatch does). The server's view of the job
        becomes JS_SUCCESS at once; the worker's own updates land in `outcome.updates`."""
        if outcome.worker is None or outcome.state.status in ENDED:
            raise ValueError(f"job {outcome.id} is not running on a worker")
        outcome.terminated = True
        outcome.state.status = agent.JS_SUCCESS
        outcome.state.ended_at = _now_ns()
        if outcome.worker.connected:
            await outcome.worker.send(
                agent.ServerMessage(termination=agent.JobTermination(job_id=outcome.id))
            )
        self._changed()

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- auth ------------------------------------------------------------------------------

    def _authenticate(self, request: web.Request) -> Claims | None:
        """livekit-server's APIKeyAuthMiddleware: None when the request carries no token."""
        header = request.headers.get("Authorization", "")
        if header:
            if not header.startswith("Bearer "):
                raise _Unauthorized("invalid authorization header. Must start with Bearer ")
            token = header[len("Bearer ") :]
        else:
            token = request.query.get("access_token", "")
        if not token:
            return None
        try:
            key = jwt.decode(token, options={"verify_signature": False}).get("iss", "")
        except jwt.PyJWTError:
            raise _Unauthorized("invalid authorization token") from None
        if key != self.api_key:
            raise _Unauthorized(f"invalid API key: {key}")
        try:
            return api.TokenVerifier(self.api_key, self.api_secret).verify(token)
        except jwt.PyJWTError as exc:
            raise _Unauthorized(f"invalid token: {token}, error: {exc}") from None

    def _refuse(self, request: web.Request, status: int, reason: str) -> web.Response:
        self.refusals.append(Refusal(request.path, status, reason))
        self._changed()
        return web.Response(status=status, text=reason + "\n")

    # -- the agent worker websocket ----------------------------------------------------------

    async def _agent_endpoint(self, request: web.Request) -> web.StreamResponse:
        try:
            claims = self._authenticate(request)
        except _Unauthorized as exc:
            return self._refuse(request, 401, str(exc))
        ws = web.WebSocketResponse(autoping=True)
        if not ws.can_prepare(request).ok:
            return web.Response(status=404)
        if claims is None or claims.video is None or not claims.video.agent:
            return self._refuse(request, 401, "permissions denied")
        await ws.prepare(request)
        self._sockets.add(ws)
        worker: FakeWorker | None = None
        try:
            worker = await self._registration(ws, claims)
            if worker is not None:
                await self._serve_worker(worker)
        finally:
            self._sockets.discard(ws)
            if worker is not None:
                worker.connected = False
                worker.close_code = ws.close_code
                for answer in worker._availability.values():
                    if not answer.done():
                        answer.set_exception(ConnectionError(f"worker {worker.id} disconnected"))
            self._changed()
        return ws

    async def _registration(self, ws: web.WebSocketResponse, claims: Claims) -> FakeWorker | None:
        """Wait for `register` (answering pings meanwhile); close the socket after the timeout."""
        try:
            async with asyncio.timeout(self.register_timeout_s):
                while True:
                    decoded = await _receive(ws)
                    if decoded is None:
                        return None
                    msg, json_mode = decoded
                    which = msg.WhichOneof("message")
                    if which == "ping":
                        await _send_raw(ws, json_mode, _pong(msg.ping))
                    elif which == "register":
                        break
        except TimeoutError:
            await ws.close(code=WSCloseCode.POLICY_VIOLATION, message=b"worker did not register")
            return None
        if msg.register.type not in agent.JobType.values():
            await ws.close(code=WSCloseCode.POLICY_VIOLATION, message=b"unknown job type")
            return None
        worker = FakeWorker(
            id=guid("AW_"), register=msg.register, claims=claims, _server=self, _ws=ws, json_mode=json_mode
        )
        if not worker.register.HasField("allowed_permissions"):
            worker.register.allowed_permissions.CopyFrom(
                models.ParticipantPermission(
                    can_subscribe=True, can_publish=True, can_publish_data=True, can_update_metadata=True
                )
            )
        worker.received.append(msg)
        self.workers.append(worker)
        await worker.send(
            agent.ServerMessage(
                register=agent.RegisterWorkerResponse(worker_id=worker.id, server_info=self.server_info)
            )
        )
        return worker

    async def _serve_worker(self, worker: FakeWorker) -> None:
        while True:
            decoded = await _receive(worker._ws)
            if decoded is None:
                return
            msg = decoded[0]
            worker.received.append(msg)
            which = msg.WhichOneof("message")
            if which == "availability":
                answer = worker._availability.get(msg.availability.job_id)
                if answer is not None and not answer.done():
                    answer.set_result(msg.availability)
            elif which == "update_worker":
                update = msg.update_worker
                worker.status_updates.append(update)
                if update.HasField("status"):
                    worker.status = update.status
                worker.load = update.load
                worker.job_count = update.job_count
            elif which == "update_job":
                self._update_job(worker, msg.update_job)
            elif which == "ping":
                await worker.send(_pong(msg.ping))
            elif which == "simulate_job":
                self._simulate_job(worker, msg.simulate_job)
            # register again and migrate_job are recorded only, as the open-source server does
            self._changed()

    def _update_job(self, worker: FakeWorker, update: agent.UpdateJobStatus) -> None:
        outcome = next((j for j in self.jobs if j.id == update.job_id and j.worker is worker), None)
        if outcome is None:
            return  # "received job update for unknown job": the server only logs it
        outcome.updates.append(update)
        if outcome.state.status in ENDED:
            return  # already ended on the server (terminated): the server no longer tracks it
        now = _now_ns()
        outcome.state.updated_at = now
        outcome.state.status = update.status
        outcome.state.error = update.error
        if update.status in ENDED:
            outcome.state.ended_at = now

    def _simulate_job(self, worker: FakeWorker, req: agent.SimulateJobRequest) -> None:
        room = req.room.name or guid("simulated-room-")
        job_type = agent.JT_PUBLISHER if req.HasField("participant") else agent.JT_ROOM
        self._spawn(self.dispatch(agent_name=worker.agent_name, room=room, to=worker, job_type=job_type))

    # -- Twirp -----------------------------------------------------------------------------

    async def _twirp_endpoint(self, request: web.Request) -> web.Response:
        service = request.match_info["service"]
        method = request.match_info["method"]
        try:
            claims = self._authenticate(request)
        except _Unauthorized as exc:
            return self._refuse(request, 401, str(exc))
        content_type = request.content_type
        call = TwirpCall(service, method, None, claims, content_type)
        self.twirp_calls.append(call)
        try:
            response = await self._twirp_call(request, call)
        except _TwirpError as err:
            call.status = TWIRP_STATUS[err.code]
            call.error_code = err.code
            self._changed()
            body: dict[str, Any] = {"code": err.code, "msg": err.msg}
            if err.meta:
                body["meta"] = err.meta
            return web.json_response(body, status=call.status)
        call.status = 200
        call.response = response
        self._changed()
        if content_type == "application/json":
            return web.Response(text=json_format.MessageToJson(response), content_type="application/json")
        return web.Response(body=response.SerializeToString(), content_type="application/protobuf")

    async def _twirp_call(self, request: web.Request, call: TwirpCall) -> Message:
        route = f"/twirp/livekit.{call.service}/{call.method}"
        if request.method != "POST":
            raise _TwirpError("bad_route", f"unsupported method {request.method} (only POST is allowed)")
        entry = self._twirp.get((call.service, call.method))
        if entry is None:
            raise _TwirpError("bad_route", f"no handler for path {route}")
        if call.content_type not in ("application/protobuf", "application/json"):
            raise _TwirpError("bad_route", f"unexpected Content-Type: {call.content_type!r}")
        request_type, handler = entry
        body = await request.read()
        try:
            if call.content_type == "application/json":
                decoded = json_format.Parse(body.decode() or "{}", request_type(), ignore_unknown_fields=True)
            else:
                decoded = request_type.FromString(body)
        except (DecodeError, json_format.ParseError, UnicodeDecodeError) as exc:
            raise _TwirpError("malformed", f"the request could not be decoded: {exc}") from None
        call.request = decoded
        scripted = self._scripted.get(call.method)
        if scripted:
            raise scripted.pop(0)
        return await handler(decoded, call.claims)

    # The handlers check grants like the real services.

    async def _create_room(self, req: room_pb.CreateRoomRequest, claims: Claims | None) -> Message:
        _ensure_create(claims)
        created = req.name not in self.rooms
        room = self.add_room(req.name, metadata=req.metadata)
        if created and req.empty_timeout:
            room.info.empty_timeout = req.empty_timeout
        return _clone(room.info)

    async def _list_rooms(self, req: room_pb.ListRoomsRequest, claims: Claims | None) -> Message:
        if claims is None or claims.video is None or not claims.video.room_list:
            raise _TwirpError("unauthenticated", "permissions denied")
        rooms = [r.info for r in self.rooms.values() if not req.names or r.name in req.names]
        return room_pb.ListRoomsResponse(rooms=rooms)

    async def _update_room_metadata(
        self, req: room_pb.UpdateRoomMetadataRequest, claims: Claims | None
    ) -> Message:
        """Like the server: needs roomAdmin for that room (a room-scoped token)."""
        _ensure_admin(claims, req.room)
        room = self.rooms.get(req.room)
        if room is None:
            raise _TwirpError("not_found", "room not found")
        room.info.metadata = req.metadata
        for client in list(self.rtc_clients.get(req.room, ())):
            client.set_metadata(req.metadata)
        return _clone(room.info)

    async def _delete_room(self, req: room_pb.DeleteRoomRequest, claims: Claims | None) -> Message:
        """Deletes the room: its connected clients are disconnected (ROOM_DELETED), as the
        server closes every participant, and its running agent jobs get a JobTermination (an
        agent that joined without connect_rtc() could not see the room go otherwise)."""
        _ensure_create(claims)
        room = self.rooms.pop(req.room, None)
        if room is None:
            raise _TwirpError("not_found", "room not found")
        self.deleted_rooms.append(room)
        for client in self.rtc_clients.pop(req.room, []):
            client.close(rtc.DisconnectReason.ROOM_DELETED)
        for outcome in self.jobs:
            if outcome.room == req.room and outcome.worker is not None and outcome.state.status not in ENDED:
                await self.terminate_job(outcome)
        return room_pb.DeleteRoomResponse()

    def _participants(self, room_name: str) -> dict[str, models.ParticipantInfo]:
        room = self.rooms.get(room_name)
        if room is None:
            raise _TwirpError("not_found", "room not found")
        return room.participants

    async def _list_participants(
        self, req: room_pb.ListParticipantsRequest, claims: Claims | None
    ) -> Message:
        _ensure_admin(claims, req.room)
        return room_pb.ListParticipantsResponse(participants=list(self._participants(req.room).values()))

    async def _get_participant(self, req: room_pb.RoomParticipantIdentity, claims: Claims | None) -> Message:
        _ensure_admin(claims, req.room)
        participant = self._participants(req.room).get(req.identity)
        if participant is None:
            raise _TwirpError("not_found", "participant not found")
        return _clone(participant)

    async def _remove_participant(
        self, req: room_pb.RoomParticipantIdentity, claims: Claims | None
    ) -> Message:
        participants = self._participants(req.room)
        if req.identity not in participants:
            raise _TwirpError("not_found", "participant not found")
        _ensure_admin(claims, req.room)
        del participants[req.identity]
        self.rooms[req.room].info.num_participants = len(participants)
        return room_pb.RemoveParticipantResponse()

    async def _create_sip_participant(
        self, req: sip_pb.CreateSIPParticipantRequest, claims: Claims | None
    ) -> Message:
        """Dials out: the callee joins the room as a SIP participant (status dialing; the test
        plays the rest). Needs the SIP call grant, a trunk, a number and a room, like the server."""
        if claims is None or claims.sip is None or not claims.sip.call:
            raise _TwirpError("unauthenticated", "permissions denied")
        if not req.sip_trunk_id and not req.HasField("trunk"):
            raise _TwirpError("invalid_argument", "missing sip trunk id")
        if not req.sip_call_to or not req.room_name:
            raise _TwirpError("invalid_argument", "missing sip_call_to or room_name")
        identity = req.participant_identity or f"sip_{req.sip_call_to}"
        self.add_room(req.room_name)
        info = self.add_participant(
            req.room_name, identity, kind=models.ParticipantInfo.SIP, name=req.participant_name or identity,
            attributes={ATTR_SIP_CALL_ID: guid("SCL_"), "sip.phoneNumber": req.sip_call_to,
                        "sip.trunkPhoneNumber": req.sip_number, "sip.callStatus": "dialing"},
        )  # fmt: skip
        return sip_pb.SIPParticipantInfo(
            participant_id=info.sid, participant_identity=identity, room_name=req.room_name,
            sip_call_id=info.attributes[ATTR_SIP_CALL_ID],
        )  # fmt: skip

    async def _transfer_sip_participant(
        self, req: sip_pb.TransferSIPParticipantRequest, claims: Claims | None
    ) -> Message:
        """On success the caller leaves the room, as the bridge hangs up its leg after REFER."""
        if not req.room_name:
            raise _TwirpError("invalid_argument", "Missing room name")
        if not req.participant_identity:
            raise _TwirpError("invalid_argument", "Missing participant identity")
        if claims is None or claims.sip is None or not claims.sip.call:
            raise _TwirpError("unauthenticated", "permissions denied")
        _ensure_admin(claims, req.room_name)
        if not req.transfer_to:
            raise _TwirpError("invalid_argument", "missing transfer_to")
        participants = self._participants(req.room_name)
        participant = participants.get(req.participant_identity)
        if participant is None:
            raise _TwirpError("not_found", "participant not found")
        if ATTR_SIP_CALL_ID not in participant.attributes:
            raise _TwirpError("invalid_argument", "no SIP session associated with participant")
        del participants[req.participant_identity]
        self.rooms[req.room_name].info.num_participants = len(participants)
        return sip_pb.TransferSIPParticipantResponse(
            transfer_id=guid("STR_"),
            status=sip_pb.STS_TRANSFER_SUCCESSFUL,
            reason=sip_pb.STR_COMPLETED,
        )

    async def _create_dispatch(
        self, req: agent_dispatch.CreateAgentDispatchRequest, claims: Claims | None
    ) -> Message:
        """Records the dispatch and runs `dispatch()` for it in the background (see `jobs`)."""
        _ensure_admin(claims, req.room)
        self.add_room(req.room)
        dispatch = agent_dispatch.AgentDispatch(
            id=guid("AD_"),
            agent_name=req.agent_name,
            room=req.room,
            metadata=req.metadata,
            state=agent_dispatch.AgentDispatchState(created_at=_now_ns()),
        )
        self.dispatches.append(dispatch)
        self._spawn(
            self.dispatch(
                agent_name=req.agent_name, room=req.room, metadata=req.metadata, dispatch_id=dispatch.id
            )
        )
        return _clone(dispatch)


def _ensure_create(claims: Claims | None) -> None:
    if claims is None or claims.video is None or not claims.video.room_create:
        raise _TwirpError("unauthenticated", "permissions denied")


def _ensure_admin(claims: Claims | None, room: str) -> None:
    if claims is None or claims.video is None or not claims.video.room_admin or claims.video.room != room:
        raise _TwirpError("unauthenticated", "permissions denied")


def _pong(ping: agent.WorkerPing) -> agent.ServerMessage:
    return agent.ServerMessage(
        pong=agent.WorkerPong(last_timestamp=ping.timestamp, timestamp=int(time.time() * 1000))
    )


async def _receive(ws: web.WebSocketResponse) -> tuple[agent.WorkerMessage, bool] | None:
    """The next frame as a WorkerMessage and whether it was protojson; None when the socket
    closed. A frame that does not decode closes it (1003), as the server stops reading."""
    frame = await ws.receive()
    try:
        if frame.type == WSMsgType.BINARY:
            return agent.WorkerMessage.FromString(frame.data), False
        if frame.type == WSMsgType.TEXT:
            return json_format.Parse(frame.data, agent.WorkerMessage(), ignore_unknown_fields=True), True
    except (DecodeError, json_format.ParseError):
        await ws.close(code=WSCloseCode.UNSUPPORTED_DATA, message=b"cannot decode WorkerMessage")
    return None


async def _send_raw(ws: web.WebSocketResponse, json_mode: bool, msg: agent.ServerMessage) -> None:
    if json_mode:
        await ws.send_str(json_format.MessageToJson(msg))
    else:
        await ws.send_bytes(msg.SerializeToString())
