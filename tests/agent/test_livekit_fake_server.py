"""A real livekit-agents AgentServer, and a real livekit-api client, against the fake LiveKit server.

These pin what livekit-agents 1.8.9 does on the wire, which the coming `voicerun worker` relies
on: registration, dispatch and job status, load and WS_FULL, refused credentials, SIGTERM drain.
Waits are on messages the fake receives; HANG_S only bounds a hang.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import pytest
from aiohttp import WSCloseCode
from fakes import livekit_worker_app
from fakes.livekit_server import ATTR_AGENT_NAME, FakeLiveKitServer, FakeWorker
from google.protobuf import json_format
from livekit import api
from livekit.agents import AgentServer, JobContext, JobExecutorType, JobRequest
from livekit.agents import __version__ as agents_version
from livekit.protocol import agent, sip

HANG_S = 30.0
"""Bounds a hang only: nothing here should take close to it."""
AGENT = "voicerun-test"
WORKER_APP = Path(livekit_worker_app.__file__)

Entrypoint = Callable[[JobContext], Awaitable[None]]
RequestFnc = Callable[[JobRequest], Awaitable[None]]


@pytest.fixture(autouse=True)
def _restore_environ() -> Iterator[None]:
    """AgentServer.run() exports LIVEKIT_URL, LIVEKIT_API_KEY, LIVEKIT_API_SECRET (and, without a
    system trust store, SSL_CERT_FILE) into os.environ; other tests must not see them."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture
async def lk() -> AsyncIterator[FakeLiveKitServer]:
    async with FakeLiveKitServer() as fake:
        yield fake


async def end_at_once(ctx: JobContext) -> None:
    ctx.shutdown("done")


def idle() -> float:
    return 0.0


def agent_server(
    lk: FakeLiveKitServer,
    entrypoint: Entrypoint = end_at_once,
    *,
    load: Callable[[], float] = idle,
    on_request: RequestFnc | None = None,
    api_secret: str | None = None,
    max_retry: int = 0,
) -> AgentServer:
    """An in-process worker: jobs in threads, the health server on a free port, no retries."""
    server = AgentServer(
        job_executor_type=JobExecutorType.THREAD,
        # No idle executor: after a job the pool would start a new one, and aclose() racing that
        # start hangs forever in 1.8.9 (ThreadJobExecutor.aclose() waits for a thread that died
        # on a ShutdownRequest sent before its InitializeRequest). Jobs start executors on demand.
        num_idle_processes=0,
        load_fnc=load,
        load_threshold=0.7,
        ws_url=lk.url,
        api_key=lk.api_key,
        api_secret=api_secret or lk.api_secret,
        host="127.0.0.1",
        port=0,
        max_retry=max_retry,
    )
    server.rtc_session(entrypoint, agent_name=AGENT, on_request=on_request)
    return server


@asynccontextmanager
async def running_worker(
    lk: FakeLiveKitServer,
    entrypoint: Entrypoint = end_at_once,
    *,
    load: Callable[[], float] = idle,
    on_request: RequestFnc | None = None,
) -> AsyncIterator[tuple[AgentServer, FakeWorker]]:
    """Run `AgentServer.run()` (as `start` mode does, devmode=False) until the fake sees it
    register; close it with `aclose()` afterwards."""
    server = agent_server(lk, entrypoint, load=load, on_request=on_request)
    run = asyncio.create_task(server.run(devmode=False), name="agent_server_run")
    registered = asyncio.create_task(lk.worker_registered(AGENT), name="worker_registered")
    try:
        async with asyncio.timeout(HANG_S):
            await asyncio.wait({run, registered}, return_when=asyncio.FIRST_COMPLETED)
        if run.done():
            run.result()  # run() failed before registering: raise its error
        yield server, registered.result()
    finally:
        registered.cancel()
        try:
            async with asyncio.timeout(HANG_S):
                await server.aclose()
                await run
        finally:
            run.cancel()  # still running only if aclose() hung


def call_done_threadsafe(event: asyncio.Event) -> Callable[[], None]:
    """Set `event` (of the test's loop) from a job thread's loop."""
    loop = asyncio.get_running_loop()

    def set_event() -> None:
        loop.call_soon_threadsafe(event.set)

    return set_event


# -- registration and load --------------------------------------------------------------------------


async def test_worker_registers_with_its_agent_name_and_reports_load(lk: FakeLiveKitServer) -> None:
    async with running_worker(lk, load=lambda: 0.25) as (server, worker):
        assert server.id == worker.id and worker.id.startswith("AW_")
        assert worker.agent_name == AGENT
        assert worker.job_type == agent.JT_ROOM
        assert worker.version == agents_version
        assert worker.permissions.agent and worker.permissions.can_publish
        assert worker.claims.video is not None and worker.claims.video.agent
        assert worker.sent[0].WhichOneof("message") == "register"
        async with asyncio.timeout(HANG_S):
            update = await worker.load_reported(lambda load: load == pytest.approx(0.25))
        assert update.status == agent.WS_AVAILABLE and update.job_count == 0

        # the health server: "OK" on /, the worker's description on /worker
        port = server.worker_info.http_port
        assert port not in (0, 8081)
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{port}/") as health:
                assert (health.status, await health.text()) == (200, "OK")
            async with http.get(f"http://127.0.0.1:{port}/worker") as info:
                assert (await info.json())["agent_name"] == AGENT

    async with asyncio.timeout(HANG_S):
        assert await worker.disconnected() == WSCloseCode.OK
    kinds = [m.WhichOneof("message") for m in worker.received]
    assert kinds[0] == "register" and set(kinds[1:]) == {"update_worker"}  # no WorkerPing


async def test_load_at_the_threshold_reports_full_and_refuses_jobs(lk: FakeLiveKitServer) -> None:
    load = [0.7]  # full is load >= load_threshold (0.7)
    async with running_worker(lk, load=lambda: load[0]) as (_, worker):
        async with asyncio.timeout(HANG_S):
            full = await worker.status_reached(agent.WS_FULL)
        assert full.load == pytest.approx(0.7)

        # the server does not offer jobs to a full worker...
        skipped = await lk.dispatch(agent_name=AGENT, room="busy-1")
        assert not skipped.accepted and skipped.reason == "no workers available"
        assert worker.messages("availability") == []
        # ...and offered one anyway, the worker checks its load again and says no
        forced = await lk.dispatch(agent_name=AGENT, room="busy-2", to=worker)
        assert not forced.accepted
        assert [(w, r.available, r.terminate) for w, r in forced.refusals] == [(worker, False, False)]

        load[0] = 0.1
        mark = len(worker.status_updates)
        async with asyncio.timeout(HANG_S):
            await worker.status_reached(agent.WS_AVAILABLE, after=mark)
            taken = await lk.dispatch(agent_name=AGENT, room="calm")
            assert taken.accepted
            await taken.status_reached(agent.JS_SUCCESS)


# -- jobs --------------------------------------------------------------------------------------------


async def test_dispatched_job_reaches_the_entrypoint_with_its_metadata(lk: FakeLiveKitServer) -> None:
    seen: list[dict[str, str]] = []

    async def entrypoint(ctx: JobContext) -> None:
        claims = ctx.token_claims()
        seen.append(
            {
                "job_id": ctx.job.id,
                "metadata": ctx.job.metadata,
                "room": ctx.room.name,
                "job_room": ctx.job.room.name,
                "agent_name": ctx.job.agent_name,
                "identity": claims.identity,
            }
        )
        ctx.shutdown("call finished")

    metadata = json.dumps({"workflow": "support", "caller": "+15550100"})
    async with running_worker(lk, entrypoint) as (_, worker):
        outcome = await lk.dispatch(agent_name=AGENT, room="call-42", metadata=metadata)
        assert outcome.accepted and outcome.worker is worker
        assert outcome.response is not None
        identity = f"agent-{outcome.id}"
        assert outcome.response.participant_identity == identity

        # the participant token in the assignment is a real room token for that identity
        claims = api.TokenVerifier(lk.api_key, lk.api_secret).verify(outcome.token)
        assert claims.identity == identity and claims.kind == "agent"
        assert claims.video is not None
        assert (claims.video.room_join, claims.video.room, claims.video.agent) == (True, "call-42", True)
        assert claims.attributes is not None and claims.attributes[ATTR_AGENT_NAME] == AGENT

        async with asyncio.timeout(HANG_S):
            await outcome.status_reached(agent.JS_SUCCESS)

    assert outcome.reported == [agent.JS_RUNNING, agent.JS_SUCCESS]
    assert [u.error for u in outcome.updates] == ["", ""]
    assert outcome.state.status == agent.JS_SUCCESS
    assert seen == [
        {
            "job_id": outcome.id,
            "metadata": metadata,
            "room": "call-42",
            "job_room": "call-42",
            "agent_name": AGENT,
            "identity": identity,
        }
    ]


async def test_a_crashing_entrypoint_is_still_reported_as_success(lk: FakeLiveKitServer) -> None:
    """An entrypoint that raises still ends in JS_SUCCESS with an empty error (with the process
    executor too: its process exits 0; JS_FAILED needs a non-zero exit), so a failed call must be
    recorded by voicerun itself."""

    async def entrypoint(ctx: JobContext) -> None:
        raise RuntimeError("tool call failed")

    async with running_worker(lk, entrypoint):
        outcome = await lk.dispatch(agent_name=AGENT, room="call-crash")
        async with asyncio.timeout(HANG_S):
            await outcome.status_reached(agent.JS_SUCCESS)
    assert outcome.reported == [agent.JS_RUNNING, agent.JS_SUCCESS]
    assert outcome.updates[-1].error == ""


async def test_job_outlives_its_entrypoint_until_the_room_is_deleted(lk: FakeLiveKitServer) -> None:
    """Returning from the entrypoint does not end a job: ctx.shutdown() does, or the room going
    away (here DeleteRoom, after which the fake sends JobTermination)."""
    returned = asyncio.Event()
    signal_returned = call_done_threadsafe(returned)

    async def entrypoint(ctx: JobContext) -> None:
        signal_returned()

    async with running_worker(lk, entrypoint) as (_, worker):
        outcome = await lk.dispatch(agent_name=AGENT, room="call-7")
        async with asyncio.timeout(HANG_S):
            await outcome.status_reached(agent.JS_RUNNING)
            await returned.wait()
            # a status report made after the entrypoint returned still counts the job
            mark = len(worker.status_updates)
            later = await worker.status_update(lambda _: True, after=mark)
        assert later.job_count == 1 and outcome.reported == [agent.JS_RUNNING]

        async with api.LiveKitAPI(lk.url, lk.api_key, lk.api_secret) as lkapi:
            await lkapi.room.delete_room(api.DeleteRoomRequest(room="call-7"))
        assert outcome.terminated
        assert [m.termination.job_id for m in worker.sent if m.HasField("termination")] == [outcome.id]
        async with asyncio.timeout(HANG_S):
            await outcome.status_reached(agent.JS_SUCCESS)


async def test_rejecting_in_on_request_terminates_the_dispatch(lk: FakeLiveKitServer) -> None:
    """JobRequest.reject() defaults to terminate=True: the server ends the job (JS_SUCCESS)
    instead of offering it to another worker."""

    async def reject(request: JobRequest) -> None:
        await request.reject()

    async with running_worker(lk, on_request=reject) as (_, worker):
        outcome = await lk.dispatch(agent_name=AGENT, room="call-rejected")
    assert not outcome.accepted and outcome.reason == "terminated by the worker"
    assert outcome.state.status == agent.JS_SUCCESS and outcome.assignment is None
    [answer] = worker.messages("availability")
    assert (answer.availability.available, answer.availability.terminate) == (False, True)


async def test_create_dispatch_through_livekit_api_reaches_the_worker(lk: FakeLiveKitServer) -> None:
    seen: list[str] = []

    async def entrypoint(ctx: JobContext) -> None:
        seen.append(ctx.job.metadata)
        ctx.shutdown()

    async with running_worker(lk, entrypoint):
        async with api.LiveKitAPI(lk.url, lk.api_key, lk.api_secret) as lkapi:
            dispatch = await lkapi.agent_dispatch.create_dispatch(
                api.CreateAgentDispatchRequest(agent_name=AGENT, room="call-8", metadata='{"n": 8}')
            )
        async with asyncio.timeout(HANG_S):
            await lk.wait_for(lambda: any(j.accepted for j in lk.jobs))
            [outcome] = lk.jobs
            await outcome.status_reached(agent.JS_SUCCESS)
    assert dispatch.id.startswith("AD_") and outcome.job.dispatch_id == dispatch.id
    assert seen == ['{"n": 8}']


# -- credentials -----------------------------------------------------------------------------------


async def test_bad_secret_is_refused_with_401_and_the_worker_gives_up(lk: FakeLiveKitServer) -> None:
    """A 401 is retried like a network error: max_retry retries (delays 0, 2, 4... capped at
    10 s; 16 by default, about 130 s), then run() raises. max_retry=1 retries once, at once."""
    server = agent_server(lk, api_secret="not-the-secret-but-at-least-32-bytes", max_retry=1)
    try:
        async with asyncio.timeout(HANG_S):
            with pytest.raises(RuntimeError, match="failed to connect to livekit after 1 attempts"):
                await server.run(devmode=False)
    finally:
        async with asyncio.timeout(HANG_S):
            await server.aclose()
    assert [(r.path, r.status) for r in lk.refusals] == [("/agent", 401), ("/agent", 401)]
    assert "Signature verification failed" in lk.refusals[0].reason
    assert lk.workers == []


async def test_agent_endpoint_checks_tokens_like_the_server(lk: FakeLiveKitServer) -> None:
    def token(key: str, grants: api.VideoGrants, secret: str | None = None) -> str:
        return api.AccessToken(key, secret or lk.api_secret).with_grants(grants).to_jwt()

    agent_token = token(lk.api_key, api.VideoGrants(agent=True))
    async with aiohttp.ClientSession() as http:
        refused = [
            (
                {"Authorization": f"Bearer {token('other-key', api.VideoGrants(agent=True))}"},
                "invalid API key",
            ),
            (
                {"Authorization": f"Bearer {token(lk.api_key, api.VideoGrants(room_create=True))}"},
                "permissions denied",
            ),
            ({"Authorization": agent_token}, "Must start with Bearer"),
            ({}, "permissions denied"),
        ]
        for headers, reason in refused:
            with pytest.raises(aiohttp.WSServerHandshakeError) as handshake:
                await http.ws_connect(f"{lk.url}/agent", headers=headers)
            assert handshake.value.status == 401
            assert reason in lk.refusals[-1].reason

        # not a websocket upgrade: 404
        async with http.get(
            f"{lk.http_url}/agent", headers={"Authorization": f"Bearer {agent_token}"}
        ) as plain:
            assert plain.status == 404

        # the token as a query parameter, and protojson text frames, work too
        async with http.ws_connect(f"{lk.url}/agent?access_token={agent_token}") as ws:
            register = agent.WorkerMessage(register=agent.RegisterWorkerRequest(agent_name="json-worker"))
            await ws.send_str(json_format.MessageToJson(register))
            answer = json_format.Parse(await ws.receive_str(), agent.ServerMessage())
            assert answer.register.worker_id.startswith("AW_")
            await ws.send_str(
                json_format.MessageToJson(agent.WorkerMessage(ping=agent.WorkerPing(timestamp=42)))
            )
            pong = json_format.Parse(await ws.receive_str(), agent.ServerMessage())
            assert pong.pong.last_timestamp == 42
    worker = await lk.worker_registered("json-worker")
    assert worker.json_mode


# -- the Twirp stub ------------------------------------------------------------------------------------


async def test_livekit_api_calls_reach_the_twirp_stub(lk: FakeLiveKitServer) -> None:
    lk.add_sip_participant("call-9", "caller", phone_number="+15550100")
    lk.add_participant("call-9", "supervisor")
    async with api.LiveKitAPI(lk.url, lk.api_key, lk.api_secret) as lkapi:
        listed = await lkapi.room.list_participants(api.ListParticipantsRequest(room="call-9"))
        assert {p.identity for p in listed.participants} == {"caller", "supervisor"}
        transfer = await lkapi.sip.transfer_sip_participant(
            api.TransferSIPParticipantRequest(
                room_name="call-9",
                participant_identity="caller",
                transfer_to="tel:+15550199",
                play_dialtone=True,
            )
        )
        assert transfer.status == sip.STS_TRANSFER_SUCCESSFUL
        await lkapi.room.remove_participant(api.RoomParticipantIdentity(room="call-9", identity="supervisor"))
        await lkapi.room.delete_room(api.DeleteRoomRequest(room="call-9"))

    assert [c.method for c in lk.twirp_calls] == [
        "ListParticipants",
        "TransferSIPParticipant",
        "RemoveParticipant",
        "DeleteRoom",
    ]
    assert all(c.status == 200 and c.content_type == "application/protobuf" for c in lk.twirp_calls)
    [call] = lk.calls_to("TransferSIPParticipant")
    assert isinstance(call.request, sip.TransferSIPParticipantRequest)
    assert (call.request.room_name, call.request.participant_identity) == ("call-9", "caller")
    assert (call.request.transfer_to, call.request.play_dialtone) == ("tel:+15550199", True)
    assert call.request.ringing_timeout.seconds == 30  # livekit-api pins the ring window
    assert call.claims is not None and call.claims.sip is not None and call.claims.sip.call
    assert call.claims.video is not None and (call.claims.video.room_admin, call.claims.video.room) == (
        True,
        "call-9",
    )
    [delete] = lk.calls_to("DeleteRoom")
    assert isinstance(delete.request, api.DeleteRoomRequest) and delete.request.room == "call-9"
    assert "call-9" not in lk.rooms and [r.name for r in lk.deleted_rooms] == ["call-9"]


async def test_twirp_errors_are_the_servers(lk: FakeLiveKitServer) -> None:
    lk.add_participant("call-10", "web-user")
    lk.add_sip_participant("call-10", "caller")
    async with api.LiveKitAPI(lk.url, lk.api_key, "not-the-secret-but-at-least-32-bytes") as wrong:
        with pytest.raises(api.TwirpError) as unauthorized:
            await wrong.room.delete_room(api.DeleteRoomRequest(room="call-10"))
        assert unauthorized.value.status == 401
    async with api.LiveKitAPI(lk.url, lk.api_key, lk.api_secret) as lkapi:
        with pytest.raises(api.TwirpError) as missing:
            await lkapi.room.delete_room(api.DeleteRoomRequest(room="no-such-room"))
        assert (missing.value.status, missing.value.code) == (404, "not_found")

        with pytest.raises(api.TwirpError) as not_sip:
            await lkapi.sip.transfer_sip_participant(
                api.TransferSIPParticipantRequest(
                    room_name="call-10", participant_identity="web-user", transfer_to="tel:+1"
                )
            )
        assert (not_sip.value.status, not_sip.value.code) == (400, "invalid_argument")
        assert not_sip.value.message == "no SIP session associated with participant"

        lk.fail_next(
            "TransferSIPParticipant",
            "failed_precondition",
            "transfer failed",
            meta={"sip_status_code": "486", "sip_status": "Busy Here"},
        )
        with pytest.raises(api.SipCallError) as busy:
            await lkapi.sip.transfer_sip_participant(
                api.TransferSIPParticipantRequest(
                    room_name="call-10", participant_identity="caller", transfer_to="tel:+1"
                )
            )
        assert (busy.value.status, busy.value.sip_status_code, busy.value.sip_status) == (
            412,
            486,
            "Busy Here",
        )
    assert set(lk.rooms["call-10"].participants) == {"web-user", "caller"}


async def test_twirp_stub_speaks_json_too(lk: FakeLiveKitServer) -> None:
    create = (
        api.AccessToken(lk.api_key, lk.api_secret).with_grants(api.VideoGrants(room_create=True)).to_jwt()
    )
    url = f"{lk.http_url}/twirp/livekit.RoomService/CreateRoom"
    async with aiohttp.ClientSession() as http:
        async with http.post(
            url, json={"name": "json-room"}, headers={"Authorization": f"Bearer {create}"}
        ) as ok:
            assert ok.status == 200 and ok.content_type == "application/json"
            assert (await ok.json())["name"] == "json-room"
        async with http.post(url, json={"name": "anonymous"}) as anonymous:
            assert anonymous.status == 401
            assert await anonymous.json() == {"code": "unauthenticated", "msg": "permissions denied"}
    assert lk.rooms["json-room"].info.sid.startswith("RM_") and "anonymous" not in lk.rooms


# -- a worker process and SIGTERM ------------------------------------------------------------------


class Hold:
    """A TCP server the subprocess's job connects to (see livekit_worker_app): the job is inside
    its entrypoint once `entered()` returns, and ends after `release()`."""

    def __init__(self) -> None:
        self._entered: asyncio.Queue[str] = asyncio.Queue()
        self._release = asyncio.Event()
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> Hold:
        self._server = await asyncio.start_server(self._connected, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._release.set()
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    @property
    def address(self) -> list[str | int]:
        assert self._server is not None
        host, port = self._server.sockets[0].getsockname()[:2]
        return [host, port]

    async def entered(self) -> str:
        """The id of the next job that entered its entrypoint."""
        return await self._entered.get()

    def release(self) -> None:
        self._release.set()

    async def _connected(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            self._entered.put_nowait((await reader.readline()).decode().strip())
            await self._release.wait()
            writer.write(b"go\n")
            await writer.drain()
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()


async def test_sigterm_drains_a_worker_process(lk: FakeLiveKitServer, tmp_path: Path) -> None:
    """`start` mode on SIGTERM: WS_FULL at once (job_count kept, `draining` left unset), no new
    jobs, the running job is awaited, then the socket closes with 1000 and the process exits 0."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIVEKIT_")}
    env |= {"LIVEKIT_URL": lk.url, "LIVEKIT_API_KEY": lk.api_key, "LIVEKIT_API_SECRET": lk.api_secret}
    log_path = tmp_path / "worker.log"
    name = livekit_worker_app.AGENT_NAME
    async with Hold() as hold:
        with log_path.open("wb") as log:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                str(WORKER_APP),
                "start",
                env=env,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
            )
            try:
                async with asyncio.timeout(HANG_S):
                    worker = await lk.worker_registered(name)
                    outcome = await lk.dispatch(
                        agent_name=name, room="drain-1", metadata=json.dumps({"hold": hold.address})
                    )
                    assert outcome.accepted
                    assert await hold.entered() == outcome.id
                    await outcome.status_reached(agent.JS_RUNNING)

                    mark = len(worker.status_updates)
                    proc.send_signal(signal.SIGTERM)
                    draining = await worker.status_reached(agent.WS_FULL, after=mark)
                    assert draining.job_count == 1 and not draining.draining

                    late = await lk.dispatch(agent_name=name, room="drain-2")
                    assert not late.accepted and late.reason == "no workers available"
                    forced = await lk.dispatch(agent_name=name, room="drain-3", to=worker)
                    assert [r.available for _, r in forced.refusals] == [False]
                    assert worker.connected  # still draining: the held job keeps it up

                    hold.release()
                    await outcome.status_reached(agent.JS_SUCCESS)
                    assert await worker.disconnected() == WSCloseCode.OK
                    assert await proc.wait() == 0
            finally:
                if proc.returncode is None:
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()
                    await proc.wait()
                print(log_path.read_text(errors="replace"))  # shown when the test fails
    assert outcome.reported == [agent.JS_RUNNING, agent.JS_SUCCESS]
