"""A whole call through the control API, on SQLite and PostgreSQL.

`POST /calls` creates the room and the dispatch on the fake LiveKit server, which offers the job
over its agent websocket to a real Worker (livekit-agents' AgentServer); the worker takes over the
call the API opened `pending` and runs it on the embedded engines (Whisper, rules, Hibari) in a
room the test drives, where a caller speaks a recorded line. `POST /calls/{id}/end` then ends it,
and every read of the API, and the tenant's webhooks (signed, in order, once each), show the call
as it happened.

The API and the worker share one database, each through its own ledger, as separate processes
would. Nothing sleeps to synchronise: the test waits on the room's captions, the job's status as
the fake server sees it, and the receiver's requests; the worker's Meter is flushed before the
ledger is read, and the webhook deliverer is woken when the worker's last records are committed
(another process's commits reach it within its idle wait).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import wave
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import numpy as np
import pytest
from aiohttp.test_utils import TestServer
from livekit.protocol import agent

from agent._providers import ProviderPool
from agent._recording_store import LocalRecordingStore
from agent._report import price_catalog
from agent._worker import LiveKitServices, Worker, WorkerConfig
from control_api import LiveKitCalls, LiveKitConfig, create_app
from metering import Ledger, Metering, MeteringConfig, WebhookDeliverer, open_ledger, open_metering
from pipeline import SAMPLE_RATE
from tests.agent.test_worker import Rooms
from tests.control_api.test_calls import Api
from tests.fakes.livekit_server import FakeLiveKitServer
from tests.fakes.room import Microphone
from tests.fakes.webhook_receiver import WebhookReceiver
from workflows import WorkflowRegistry, load_workflow

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "workflows" / "examples"
AGENT = "voicerun"
HANG_S = 60  # a safety net for a broken build, not a synchronisation
GREETING = "Thanks for calling Luigi's. How can I help you today?"
HOURS = "We're open every day from five in the evening until eleven."
LIFECYCLE = ["call.initiating", "call.ringing", "call.in_progress", "call.completed", "call.report"]
"""docs/webhooks.md: an event for each status the call enters (pending, connecting, active,
completed), and the end-of-call report."""


def first_line(path: Path) -> np.ndarray:
    """The recording's first utterance ("Hi, what time do you open tonight?"), cut at the long
    silences around it, with a tenth of a second of its own silence on each side."""
    with wave.open(str(path)) as w:
        assert (w.getnchannels(), w.getframerate()) == (1, SAMPLE_RATE)
        audio = np.frombuffer(w.readframes(w.getnframes()), "<i2")
    loud = np.flatnonzero(np.abs(audio.astype(np.int32)) > 328)  # -40 dBFS
    gaps = np.flatnonzero(np.diff(loud) > 0.6 * SAMPLE_RATE)
    start, end = loud[0], loud[gaps[0]] + 1
    pad = SAMPLE_RATE // 10
    return audio[max(0, start - pad) : end + pad].copy()


class Caller:
    """The caller's open microphone: silence, and a line when `say()` is called."""

    def __init__(self, mic: Microphone) -> None:
        self.mic = mic
        self._lines: asyncio.Queue[np.ndarray] = asyncio.Queue()

    def say(self, audio: np.ndarray) -> None:
        self._lines.put_nowait(audio)

    async def run(self) -> None:
        silence = np.zeros(SAMPLE_RATE // 5, np.int16)
        while True:
            line = self._lines.get_nowait() if not self._lines.empty() else silence
            await self.mic.play(line)


async def until(event: asyncio.Event, check: Callable[[], bool]) -> None:
    async with asyncio.timeout(HANG_S):
        while not check():
            event.clear()
            await event.wait()


@dataclass
class Stack:
    api: Api
    lk: FakeLiveKitServer
    rooms: Rooms
    metering: Metering
    """The worker's."""
    deliverer: WebhookDeliverer
    stop_delivering: Callable[[], Awaitable[None]]
    """Stops the deliverer and waits for its last pass (idempotent)."""
    receiver: WebhookReceiver


@contextlib.asynccontextmanager
async def api_server(
    lk: FakeLiveKitServer, ledger: Ledger, registry: WorkflowRegistry, store: LocalRecordingStore
) -> AsyncIterator[Api]:
    livekit = LiveKitCalls(
        LiveKitConfig(url=lk.url, api_key=lk.api_key, api_secret=lk.api_secret, agent_name=AGENT)
    )
    app = create_app(ledger, registry, livekit, recordings=store.open)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        async with aiohttp.ClientSession() as http:
            api = Api(f"http://127.0.0.1:{server.port}", http, ledger, lk)
            api.key = (await ledger.create_api_key("acme")).key
            yield api
    finally:
        await server.close()
        await livekit.aclose()


@contextlib.asynccontextmanager
async def worker_process(
    lk: FakeLiveKitServer, config: MeteringConfig, registry: WorkflowRegistry, store: LocalRecordingStore
) -> AsyncIterator[tuple[Rooms, Metering]]:
    worker_config = WorkerConfig(
        url=lk.url,
        api_key=lk.api_key,
        api_secret=lk.api_secret,
        agent_name=AGENT,
        port=0,
        drain_timeout_s=1.0,
    )
    rooms = Rooms(server=lk)
    providers = ProviderPool()  # the embedded engines the workflow names
    async with open_metering(config, catalog=price_catalog(), recover=True) as metering:
        worker = Worker(
            worker_config,
            registry=registry,
            providers=providers,
            meter=metering.meter,
            recordings=store,
            room_factory=rooms,
            services=LiveKitServices(worker_config),
            # never full: Whisper's decodes on a loaded machine must not turn the dispatch away
            cpu=lambda: 0.0,
        )
        task = asyncio.create_task(worker.run())
        try:
            async with asyncio.timeout(HANG_S):
                await lk.worker_registered(AGENT)
            yield rooms, metering
        finally:
            await asyncio.wait_for(worker.drain(), HANG_S)
            await asyncio.wait_for(task, HANG_S)
            await providers.aclose()


@pytest.fixture
async def stack(database_url: str, tmp_path: Path) -> AsyncIterator[Stack]:
    workflow = load_workflow(EXAMPLES / "front-desk.yaml")
    registry = WorkflowRegistry({workflow.slug: (workflow, EXAMPLES / "front-desk.yaml")})
    store = LocalRecordingStore(tmp_path / "recordings")
    async with contextlib.AsyncExitStack() as stack:
        lk = FakeLiveKitServer()
        await lk.start()
        stack.push_async_callback(lk.aclose)
        # The API process: its own worker id in the ledger, as `voicerun api` has (agent/_api_cmd.py).
        ledger = await open_ledger(
            MeteringConfig(database_url=database_url, worker_id="e2e-api"), catalog=price_catalog()
        )
        stack.push_async_callback(ledger.aclose)
        api = await stack.enter_async_context(api_server(lk, ledger, registry, store))
        receiver = await stack.enter_async_context(WebhookReceiver())
        deliverer = WebhookDeliverer(ledger)
        stack.push_async_callback(deliverer.aclose)
        stop = asyncio.Event()
        delivering = asyncio.create_task(deliverer.run(stop), name="webhooks")

        async def stop_delivering() -> None:
            stop.set()
            await asyncio.wait_for(delivering, HANG_S)

        stack.push_async_callback(stop_delivering)
        rooms, metering = await stack.enter_async_context(
            worker_process(
                lk, MeteringConfig(database_url=database_url, worker_id="e2e-worker"), registry, store
            )
        )
        yield Stack(api, lk, rooms, metering, deliverer, stop_delivering, receiver)


async def test_a_call_started_and_ended_through_the_api_reads_back_whole_with_its_webhooks(
    stack: Stack,
) -> None:
    api, lk, rx = stack.api, stack.lk, stack.receiver
    status, endpoint = await api.req("POST", "/api/v1/webhooks", json={"url": f"{rx.url}/hooks"})
    assert status == 201, endpoint
    rx.secret = endpoint["secret"]

    status, started = await api.req(
        "POST", "/api/v1/calls",
        json={"workflow_slug": "front-desk", "user_id": "u-e2e", "metadata": {"ticket": 7}},
    )  # fmt: skip
    assert status == 201, started
    call_id, room_name = started["call_id"], started["room_name"]

    # The fake server offered the job to the registered worker, with the metadata the API gave it.
    room = await stack.rooms.next(1)
    (job,) = lk.jobs
    (dispatch,) = lk.calls_to("CreateDispatch")
    assert job.accepted and job.worker is await lk.worker_registered(AGENT)
    assert job.room == room.name == room_name and job.job.metadata == dispatch.request.metadata
    assert json.loads(job.job.metadata)["call_id"] == call_id
    assert room.connected_with is not None and room.connected_with[1] == job.token

    mic = Microphone()
    caller = Caller(mic)
    speaking = asyncio.create_task(caller.run())
    try:
        streams = room.local_participant.streams_changed
        room.join("caller", microphone=mic)
        await until(streams, lambda: len(room.captions(track="TR_agent1")) >= 1)  # the greeting, heard
        caller.say(first_line(EXAMPLES / "audio" / "front-desk-caller.wav"))
        await until(streams, lambda: len(room.captions(track="TR_agent1")) >= 2)  # the answer, heard
        heard = [c.text for c in room.captions(track="TR_caller", final=True)]
        assert [c.text for c in room.captions(track="TR_agent1")] == [GREETING, HOURS], heard

        await stack.metering.meter.flush()  # what the worker reported so far is in the ledger
        status, call = await api.req("GET", f"/api/v1/calls/{call_id}")
        assert (status, call["status"], call["current_agent"]) == (200, "active", "receptionist")
        status, active = await api.req("GET", "/api/v1/calls/active")
        assert [(c["id"], c["status"], c["current_agent"]) for c in active] == [
            (call_id, "active", "receptionist")
        ]

        status, ended = await api.req("POST", f"/api/v1/calls/{call_id}/end")
        # Asked for: the worker ends it a moment later, so it is still running in the answer.
        assert (status, ended["id"], ended["status"]) == (202, call_id, "active")
        async with asyncio.timeout(HANG_S):
            await job.status_reached(agent.JS_SUCCESS)  # the worker's job is over
    finally:
        speaking.cancel()
        await asyncio.gather(speaking, return_exceptions=True)
        await mic.aclose()
    await stack.metering.meter.flush()
    stack.deliverer.wake()  # the worker's last records are committed: deliver them now

    # -- every read ---------------------------------------------------------------------------
    status, call = await api.req("GET", f"/api/v1/calls/{call_id}")
    assert status == 200
    assert (call["status"], call["ended_reason"], call["current_agent"]) == ("completed", "api", None)
    status, again = await api.req("POST", f"/api/v1/calls/{call_id}/end")  # idempotent, now done
    assert (status, again["status"], again["ended_reason"]) == (200, "completed", "api")
    assert (call["workflow_slug"], call["user_id"], call["direction"], call["metadata"]) == (
        "front-desk", "u-e2e", "web", {"ticket": 7},
    )  # fmt: skip
    assert call["agent_history"] == ["receptionist"] and call["recording"] is None
    assert call["duration_seconds"] > 0 and call["ended_at"] >= call["started_at"]

    status, transcript = await api.req("GET", f"/api/v1/calls/{call_id}/transcript")
    assert status == 200
    said = [(e["role"], e["content"]) for e in transcript if e["role"] != "system"]
    assert said == [("assistant", GREETING), ("user", heard[0]), ("assistant", HOURS)], said
    assert len(heard) == 1 and "open" in heard[0].lower() and "tonight" in heard[0].lower()

    status, metrics = await api.req("GET", f"/api/v1/calls/{call_id}/metrics")
    assert status == 200 and metrics == call["metrics"]
    assert metrics["turns"] >= 1 and metrics["agent_handoffs"] == 0
    latencies = ("stt_latency_ms", "llm_latency_ms", "tts_latency_ms", "e2e_latency_ms")
    assert all(metrics[k] is not None and metrics[k] >= 0 for k in latencies), metrics
    assert metrics["e2e_latency_ms"] > 0

    status, page = await api.req("GET", "/api/v1/calls?status=completed&workflow=front-desk&user_id=u-e2e")
    assert status == 200 and (page["total"], [c["id"] for c in page["items"]]) == (1, [call_id])
    assert page["items"][0]["status"] == "completed"
    status, page = await api.req("GET", "/api/v1/calls?status=active")
    assert status == 200 and page["total"] == 0
    assert await api.req("GET", "/api/v1/calls/active") == (200, [])

    # A call started with POST /calls is not recorded (only a dialled call can ask to be).
    status, answer = await api.req("GET", f"/api/v1/calls/{call_id}/recording")
    assert (status, answer) == (404, {"error": "this call has no recording"})

    # -- the webhooks ---------------------------------------------------------------------------
    async with asyncio.timeout(HANG_S):
        await rx.received(len(LIFECYCLE))
    assert rx.refused == [], [r.headers for r in rx.refused]  # every signature verified as documented
    events = [r.event for r in rx.accepted]
    assert [e["type"] for e in events] == LIFECYCLE
    assert {e["call_id"] for e in events} == {call_id}
    assert [r.headers["Webhook-Id"] for r in rx.requests] == [e["id"] for e in events]
    assert len({e["id"] for e in events}) == len(events)  # each event once
    completed, report = events[3]["data"], events[4]["data"]
    assert (completed["status"], completed["ended_reason"]) == ("completed", "api")
    assert (completed["tenant"], completed["user_id"], completed["metadata"]) == (
        "acme",
        "u-e2e",
        {"ticket": 7},
    )
    assert report["transcript"] == transcript and report["agent_history"] == ["receptionist"]
    assert report["metrics"]["turns"] == metrics["turns"]
    await stack.stop_delivering()
    outbox = await api.ledger.outbox_status(kind="webhook")
    assert (outbox.delivered, outbox.pending, outbox.dead) == (len(LIFECYCLE), 0, 0)
    assert len(rx.requests) == len(LIFECYCLE)  # nothing sent twice
