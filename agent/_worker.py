"""One worker process: registers with LiveKit through livekit-agents' AgentServer and runs every
call it is dispatched on this process's own event loop.

livekit-agents runs a job in a process of its own (hundreds of MB each) or, with the THREAD
executor, in a thread with an event loop of its own. voicerun's calls share one loop, one set of
providers and the models loaded once, so the job's entry (in livekit's job thread) only hands the
room's URL, token and metadata to that loop and waits for the call to end
(docs/architecture.md, "Worker").
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import structlog
from aiohttp import web
from livekit import api, rtc
from livekit.agents import AgentServer, JobContext, JobExecutorType, JobRequest

from metering import CallClosed, CallOpened, Meter, metrics_app
from pipeline import RealClock, shared_end_of_turn_model
from workflows import UnknownWorkflowError, WorkflowRegistry

from ._call import ENDED_BY_DRAIN
from ._dispatch import Dispatch, DispatchError, redacted
from ._providers import ProviderPool
from ._recording_store import RecordingStore
from ._room_call import CallHost, RoomCall, RoomServices

log = structlog.get_logger("voicerun.worker")

DRAIN_GRACE_S = 30.0
JOB_TERMINATED = "job_terminated"
"""The reason of a call whose job LiveKit ended (its room deleted through the API, mostly)."""
TERMINATE_GRACE_S = 5.0
"""How long a terminated job's call may take to end and record itself before it is stopped."""
"""After the drain timeout has ended the remaining calls, how long their goodbyes may take."""


class WorkerStartError(Exception):
    """The worker cannot start (a setting, the credentials, the server): one line for the operator."""


@dataclass(frozen=True)
class WorkerConfig:
    url: str
    api_key: str
    api_secret: str
    agent_name: str = "voicerun"
    max_calls: int = 10
    """Calls this process takes at once; LiveKit sends more to other workers."""
    host: str = "0.0.0.0"
    port: int = 8081
    """Health (/ and /ready), /worker and Prometheus /metrics; 0 picks a free port (logged)."""
    drain_timeout_s: float = 600.0
    max_cpu: float = 0.9
    """This process's share of one core (the GIL's limit) above which it reports itself full."""


RoomFactory = Callable[[], Any]
"""Makes the room a job joins: `rtc.Room` itself, or a test's object with its interface."""


class LiveKitServices:
    """The server's APIs a call uses (livekit-api over HTTP): room deletion, SIP transfer."""

    def __init__(self, config: WorkerConfig) -> None:
        self._config = config
        self._api: api.LiveKitAPI | None = None

    def _client(self) -> api.LiveKitAPI:
        if self._api is None:
            c = self._config
            self._api = api.LiveKitAPI(_http_url(c.url), c.api_key, c.api_secret)
        return self._api

    async def delete_room(self, room: str) -> None:
        await self._client().room.delete_room(api.DeleteRoomRequest(room=room))

    async def transfer(self, room: str, identity: str, number: str) -> None:
        await self._client().sip.transfer_sip_participant(
            api.TransferSIPParticipantRequest(
                room_name=room, participant_identity=identity, transfer_to=f"tel:{number}"
            )
        )

    async def check_credentials(self) -> None:
        """One authenticated request: a refused key or an unreachable server fails here, at
        start, with one line (livekit-agents itself retries both for minutes, then exits 0)."""
        url = self._config.url
        try:
            await self._client().room.list_rooms(api.ListRoomsRequest())
        except api.TwirpError as exc:
            if exc.status in (401, 403):
                raise WorkerStartError(
                    f"LiveKit at {url} refused LIVEKIT_API_KEY / LIVEKIT_API_SECRET (HTTP {exc.status})"
                ) from None
            raise WorkerStartError(
                f"LiveKit at {url} answered {exc.status} {exc.code}: {exc.message}"
            ) from None
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise WorkerStartError(f"cannot reach LiveKit at {url}: {exc or type(exc).__name__}") from None

    async def aclose(self) -> None:
        if self._api is not None:
            await self._api.aclose()


def _http_url(url: str) -> str:
    return "http" + url[2:] if url.startswith("ws") else url


class _CpuLoad:
    """This process's CPU over the last interval, as a share of one core."""

    def __init__(self) -> None:
        self._cpu = time.process_time()
        self._wall = time.monotonic()
        self.value = 0.0

    def sample(self) -> float:
        cpu, wall = time.process_time(), time.monotonic()
        if wall - self._wall >= 0.25:
            self.value = (cpu - self._cpu) / (wall - self._wall)
            self._cpu, self._wall = cpu, wall
        return self.value


class Worker:
    """Serves one process's share of a pool: AgentServer registration, the calls, health,
    metrics and drain. `run()` returns when the worker has stopped (drained or failed)."""

    def __init__(
        self,
        config: WorkerConfig,
        *,
        registry: WorkflowRegistry,
        providers: ProviderPool,
        meter: Meter | None,
        recordings: RecordingStore | None = None,
        room_factory: RoomFactory = rtc.Room,
        services: RoomServices | None = None,
        cpu: Callable[[], float] | None = None,
        credentials: Callable[[str], Awaitable[Mapping[str, Mapping[str, str]]]] | None = None,
    ) -> None:
        """cpu: this process's recent CPU as a share of one core (default: measured)."""
        self.config = config
        self._room_factory = room_factory
        self._services = services
        self.host = CallHost(
            registry=registry,
            providers=providers,
            clock=RealClock(),
            meter=meter,
            services=services,
            recordings=recordings,
            credentials=credentials,
        )
        self._jobs = 0
        """Jobs accepted and not yet ended (a call registers itself a little later)."""
        self._by_job: dict[str, RoomCall] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: AgentServer | None = None
        self._http: web.AppRunner | None = None
        self.port: int | None = None
        self.draining = False
        self._stopped = asyncio.Event()
        self._cpu = cpu or _CpuLoad().sample
        self.jobs_failed = 0

    # -- capacity ---------------------------------------------------------------------------

    def load(self, *_: object) -> float:
        """What LiveKit sees (1.0 = full: no more jobs here): calls against the maximum, or
        CPU against its ceiling, whichever is higher."""
        if self.draining:
            return 1.0
        calls = self._jobs / self.config.max_calls
        cpu = self._cpu() / self.config.max_cpu
        return min(1.0, max(calls, cpu))

    async def _on_request(self, request: JobRequest) -> None:
        if self.draining or self._jobs >= self.config.max_calls:
            log.info("job_declined", job_id=request.id, draining=self.draining, calls=self._jobs)
            await request.reject()
            return
        await request.accept()

    # -- lifecycle --------------------------------------------------------------------------

    async def prewarm(self) -> None:
        """Load every engine the registry's workflows use before the first call needs it."""
        t0 = time.perf_counter()
        pool = self.host.providers
        needs_model = False
        for workflow in self.host.registry.workflows():
            for name in workflow.agents:
                await pool.stt(workflow.stt_for(name))
                await pool.tts(workflow.tts_for(name))
                needs_model = needs_model or workflow.turn_for(name).end_of_turn == "model"
        if needs_model:
            await shared_end_of_turn_model()
        log.info("worker_prewarmed", seconds=round(time.perf_counter() - t0, 2))

    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        try:
            if isinstance(self._services, LiveKitServices):
                await self._services.check_credentials()
            if len(self.config.api_secret.encode()) < 32:
                log.warning(
                    "short_api_secret",
                    detail="LIVEKIT_API_SECRET is under 32 bytes: for livekit-server --dev only",
                )
            await self.prewarm()
            await self._serve_http()
            server = self._server = self._agent_server()
            await server.run(devmode=False)
        finally:
            await self._close()

    def _agent_server(self) -> AgentServer:
        config = self.config
        server = AgentServer(
            ws_url=config.url,
            api_key=config.api_key,
            api_secret=config.api_secret,
            job_executor_type=JobExecutorType.THREAD,
            # A warm idle thread executor can hang aclose() in livekit-agents 1.8.9; jobs here
            # start in microseconds anyway (the call runs on this loop, not in the thread).
            num_idle_processes=0,
            load_fnc=self.load,
            load_threshold=1.0,
            drain_timeout=int(config.drain_timeout_s),
            # livekit-agents' own health server: a free loopback port, so processes on one host
            # never collide; ours (self.port) serves health, /worker and metrics.
            host="127.0.0.1",
            port=0,
        )
        server.rtc_session(self._entry, agent_name=config.agent_name, on_request=self._on_request)
        return server

    def drain(self) -> asyncio.Task[None]:
        """Stop taking calls, let the running ones finish (up to the drain timeout, then end
        them with reason `drain`), then stop."""
        assert self._loop is not None
        return self._loop.create_task(self._drain(), name="worker-drain")

    async def _drain(self) -> None:
        if self.draining or self._server is None:
            return
        self.draining = True
        log.info("worker_draining", calls=len(self.host.calls), timeout_s=self.config.drain_timeout_s)
        server = self._server
        # livekit's drain waits for every job (its timeout would leave calls running); the
        # timeout is ours: the calls left then are ended, and their jobs end with them.
        drained = asyncio.ensure_future(server.drain(timeout=None))
        done, _ = await asyncio.wait({drained}, timeout=self.config.drain_timeout_s or None)
        if not done:
            log.warning("drain_timeout", ending_calls=len(self.host.calls))
            for room_call in list(self.host.calls.values()):
                room_call.end(ENDED_BY_DRAIN)
            done, _ = await asyncio.wait({drained}, timeout=DRAIN_GRACE_S)
            if not done:
                log.error("drain_incomplete", calls=len(self.host.calls))
                drained.cancel()
        log.info("worker_drained")
        await server.aclose()

    async def _close(self) -> None:
        await self.host.aclose()
        if self._http is not None:
            await self._http.cleanup()
        if self._services is not None and isinstance(self._services, LiveKitServices):
            await self._services.aclose()
        self._stopped.set()

    # -- a job ------------------------------------------------------------------------------

    async def _entry(self, ctx: JobContext) -> None:
        """In livekit-agents' job thread: hand the job to the call loop and wait for its end."""
        assert self._loop is not None
        # livekit-agents 1.8 does not expose the job's server URL and room token publicly.
        info = ctx._info
        job = self._loop_run(
            self.run_job(
                ctx.job.id, ctx.job.room.name, ctx.job.metadata, info.url or self.config.url, info.token
            )
        )
        job_id = ctx.job.id

        async def on_shutdown(reason: str) -> None:
            # livekit asks the job to stop (JobTermination when the room was deleted through the
            # API, a drain's end, our own shutdown below): end the call now, as a hang-up would,
            # rather than after livekit's own timeouts cancel the entry.
            loop.call_soon_threadsafe(self._end_job, job_id, JOB_TERMINATED)

        loop = self._loop
        ctx.add_shutdown_callback(on_shutdown)
        done = asyncio.wrap_future(job)
        try:
            await asyncio.shield(done)
        except asyncio.CancelledError:
            # livekit ended the job (JobTermination: the room was deleted through the API, or a
            # shutdown): end the call as a hang-up would, so it is recorded whole, then wait a
            # little for it before stopping it outright.
            assert self._loop is not None
            self._loop.call_soon_threadsafe(self._end_job, ctx.job.id, JOB_TERMINATED)
            try:
                await asyncio.wait_for(asyncio.shield(done), TERMINATE_GRACE_S)
            except (TimeoutError, asyncio.CancelledError):
                job.cancel()
            raise
        finally:
            ctx.shutdown("call ended")

    def _end_job(self, job_id: str, reason: str) -> None:
        room_call = self._by_job.get(job_id)
        if room_call is not None:
            room_call.end(reason)

    def _loop_run(self, coro: Any) -> Any:
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    async def run_job(self, job_id: str, room_name: str, metadata: str, url: str, token: str) -> None:
        """One dispatched job on the call loop: never raises (a failure is logged and recorded)."""
        self._jobs += 1
        structlog.contextvars.bind_contextvars(job_id=job_id, room=room_name)
        try:
            await self._run_job(job_id, room_name, metadata, url, token)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.jobs_failed += 1
            log.exception("job_failed", error=f"{type(exc).__name__}: {exc}")
        finally:
            self._jobs -= 1

    async def _run_job(self, job_id: str, room_name: str, metadata: str, url: str, token: str) -> None:
        try:
            dispatch = Dispatch.parse(metadata)
            workflow = self.host.registry.get(dispatch.workflow_slug)
        except (DispatchError, UnknownWorkflowError) as exc:
            self.jobs_failed += 1
            reason = str(exc).strip("'\"")
            log.error("job_rejected", error=reason, metadata=redacted(metadata))
            self._record_unstartable(_call_id_of(metadata) or job_id, _slug_of(metadata), reason)
            return
        room = self._room_factory()
        try:
            await room.connect(url, token, rtc.RoomOptions(auto_subscribe=False))
        except Exception as exc:
            self.jobs_failed += 1
            reason = f"cannot join room {room_name}: {type(exc).__name__}: {exc}"
            log.error("job_failed", error=reason)
            self._record_unstartable(dispatch.call_id or job_id, workflow.slug, reason)
            return
        try:
            providers = await self.host.providers_for(dispatch.tenant)
            room_call = RoomCall(room, dispatch, self.host, workflow=workflow, providers=providers)
        except Exception as exc:  # user_data or a provider the workflow names, checked before the call
            self.jobs_failed += 1
            reason = f"{type(exc).__name__}: {exc}"
            log.error("job_rejected", error=reason)
            self._record_unstartable(dispatch.call_id or job_id, workflow.slug, reason)
            await room.disconnect()
            return
        self._by_job[job_id] = room_call
        try:
            record = await asyncio.create_task(room_call.run(), name=f"call-{room_call.call.id}")
        finally:
            del self._by_job[job_id]
        log.info("job_done", call_id=record.call_id, status=record.status)

    def _record_unstartable(self, call_id: str, slug: str, reason: str) -> None:
        meter = self.host.meter
        if meter is None:
            return
        from datetime import UTC, datetime

        now = datetime.now(UTC)
        meter.report(CallOpened(call_id=call_id, workflow_slug=slug, started_at=now))
        meter.report(
            CallClosed(call_id=call_id, status="failed", reason=reason[:500], ended_at=now, duration_s=0.0)
        )

    # -- health and metrics -----------------------------------------------------------------

    async def _serve_http(self) -> None:
        app = metrics_app()
        app.router.add_get("/", self._health)
        app.router.add_get("/ready", self._ready)
        app.router.add_get("/worker", self._worker_info)
        runner = web.AppRunner(app)
        await runner.setup()
        try:
            await web.TCPSite(runner, self.config.host, self.config.port).start()
        except OSError as exc:
            await runner.cleanup()
            raise WorkerStartError(
                f"cannot serve health and metrics on {self.config.host}:{self.config.port}: {exc.strerror} "
                "(give each worker process its own --port, or 0 for a free one)"
            ) from None
        self._http = runner
        self.port = runner.addresses[0][1]
        log.info("worker_http", port=self.port, paths=["/", "/ready", "/worker", "/metrics"])

    def _registered(self) -> bool:
        server = self._server
        return (
            server is not None
            and bool(getattr(server, "id", ""))
            and not getattr(server, "_connection_failed", False)
        )

    async def _health(self, _: web.Request) -> web.Response:
        if self._server is not None and getattr(self._server, "_connection_failed", False):
            return web.Response(status=503, text="failed to connect to livekit\n")
        return web.Response(text="ok\n")

    async def _ready(self, _: web.Request) -> web.Response:
        if self.draining:
            return web.Response(status=503, text="draining\n")
        if not self._registered():
            return web.Response(status=503, text="not registered with livekit\n")
        return web.Response(text="ready\n")

    async def _worker_info(self, _: web.Request) -> web.Response:
        return web.json_response(
            {
                "agent_name": self.config.agent_name,
                "worker_id": getattr(self._server, "id", "") if self._server else "",
                "registered": self._registered(),
                "draining": self.draining,
                "calls": len(self.host.calls),
                "jobs": self._jobs,
                "max_calls": self.config.max_calls,
                "load": round(self.load(), 3),
                "jobs_failed": self.jobs_failed,
                "pid": os.getpid(),
            }
        )


def _slug_of(metadata: str) -> str:
    import json

    try:
        slug = json.loads(metadata).get("workflow_slug")
    except Exception:
        return "unknown"
    return slug if isinstance(slug, str) and 0 < len(slug) <= 64 else "unknown"


def _call_id_of(metadata: str) -> str | None:
    import json

    try:
        call_id = json.loads(metadata).get("call_id")
    except Exception:
        return None
    return call_id if isinstance(call_id, str) and 0 < len(call_id) <= 128 else None


def install_drain_signals(worker: Worker) -> None:
    """SIGTERM and SIGINT drain the worker (a second one is ignored: the drain has a timeout)."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, worker.drain)
