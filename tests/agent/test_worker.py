"""The worker against the fake LiveKit server: real livekit-agents AgentServer over a real
websocket, calls in rooms the test drives (tests/fakes/room.py), the ledger on SQLite."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import numpy as np
import pytest
from livekit.protocol import agent

from agent._providers import ProviderPool
from agent._worker import LiveKitServices, Worker, WorkerConfig
from metering import MeteringConfig, open_metering
from pipeline.testing import instant_providers
from tests.agent.test_room_call import WORKFLOW, speaking
from tests.fakes.livekit_server import FakeLiveKitServer
from tests.fakes.room import Microphone, TestRoom
from workflows import WorkflowRegistry, load_workflow_text

AGENT = "voicerun-test"
HANG_S = 30  # a safety net for a broken build, not a synchronisation


@pytest.fixture
async def lk() -> AsyncIterator[FakeLiveKitServer]:
    server = FakeLiveKitServer()
    await server.start()
    try:
        yield server
    finally:
        await server.aclose()


class Rooms:
    """The room factory: every room a job joins, and an event when one is made. With `server`,
    the rooms connect through it (its room APIs reach them: tests/fakes/room.py)."""

    def __init__(self, server: FakeLiveKitServer | None = None) -> None:
        self.made: list[TestRoom] = []
        self.changed = asyncio.Event()
        self.server = server

    def __call__(self) -> TestRoom:
        room = TestRoom(f"room-{len(self.made)}", server=self.server)
        self.made.append(room)
        self.changed.set()
        return room

    async def next(self, count: int) -> TestRoom:
        async with asyncio.timeout(HANG_S):
            while len(self.made) < count:
                self.changed.clear()
                await self.changed.wait()
        return self.made[count - 1]


@contextlib.asynccontextmanager
async def running(
    lk: FakeLiveKitServer, tmp_path: Path, recordings: object = None, **options: object
) -> AsyncIterator[tuple[Worker, Rooms, object]]:
    workflow = load_workflow_text(WORKFLOW)
    # drain_timeout_s: the fixture's end ends what a test left running; the load is the calls
    # alone (this process's CPU also runs the server and the rooms: see the test of load())
    options = {"drain_timeout_s": 1.0, **options}
    config = WorkerConfig(
        url=lk.url,
        api_key=lk.api_key,
        api_secret=lk.api_secret,
        agent_name=AGENT,
        port=0,
        **options,  # type: ignore[arg-type]
    )
    rooms = Rooms()
    providers = ProviderPool(instant_providers(transcript="where is my order"))
    async with open_metering(
        MeteringConfig(data_dir=tmp_path, worker_id="w-test"), catalog=_catalog(), recover=True
    ) as metering:
        worker = Worker(
            config,
            registry=WorkflowRegistry({workflow.slug: (workflow, Path("desk.yaml"))}),
            providers=providers,
            meter=metering.meter,
            room_factory=rooms,
            services=LiveKitServices(config),
            cpu=lambda: 0.0,
            recordings=recordings,  # type: ignore[arg-type]
        )
        task = asyncio.create_task(worker.run())
        try:
            async with asyncio.timeout(HANG_S):
                await lk.worker_registered(AGENT)
            yield worker, rooms, metering
        finally:
            await asyncio.wait_for(worker.drain(), HANG_S)
            await asyncio.wait_for(task, HANG_S)
            await providers.aclose()


def _catalog() -> object:
    from agent._report import price_catalog

    return price_catalog()


async def call_row(metering: object, call_id: str) -> object:
    await metering.meter.flush()  # type: ignore[attr-defined]
    return await metering.ledger.call(call_id)  # type: ignore[attr-defined]


async def test_a_dispatched_call_runs_in_its_room_and_lands_in_the_ledger(
    lk: FakeLiveKitServer, tmp_path: Path
) -> None:
    async with running(lk, tmp_path) as (worker, rooms, metering):
        meta = {"workflow_slug": "desk", "call_id": "call-1", "user_id": "u-7", "tenant": "acme",
                "direction": "web", "metadata": {"ticket": 42}}  # fmt: skip
        job = await lk.dispatch(agent_name=AGENT, room="call-room-1", metadata=json.dumps(meta))
        assert job.accepted
        room = await rooms.next(1)
        assert room.connected_with is not None and room.connected_with[1] == job.token
        mic = Microphone()
        streams = room.local_participant.streams_changed
        async with speaking(mic, 1.0):
            caller = room.join("caller", microphone=mic)
            async with asyncio.timeout(HANG_S):
                while len(room.captions(track="TR_agent1", final=True)) < 2:
                    streams.clear()
                    await streams.wait()
            # while it runs, the process reports it
            async with (
                aiohttp.ClientSession() as http,
                http.get(f"http://127.0.0.1:{worker.port}/worker") as r,
            ):
                info = await r.json()
                assert info["calls"] == 1 and info["max_calls"] == 10 and info["registered"] is True
                async with http.get(f"http://127.0.0.1:{worker.port}/metrics") as m:
                    assert m.status == 200 and "voicerun_turn_latency_seconds" in await m.text()
            room.leave(caller)
            async with asyncio.timeout(HANG_S):
                await job.status_reached(agent.JS_SUCCESS)
        await mic.aclose()
        row = await call_row(metering, "call-1")
    assert row.status == "completed" and row.ended_reason == "user_ended"
    assert (row.user_id, row.tenant, row.direction, row.metadata) == ("u-7", "acme", "web", {"ticket": 42})
    said = [(e["role"], e["content"]) for e in row.transcript if e["role"] != "system"]
    assert said == [
        ("assistant", "Hello, thanks for calling."),
        ("user", "where is my order"),
        ("assistant", "Your order is on its way."),
    ]


@pytest.mark.parametrize(
    ("metadata", "problem"),
    [
        ("not json", "job metadata is not valid JSON"),
        ('{"workflow_slug": "desk", "colour": "red"}', "colour is not a field"),
        ('{"workflow_slug": "nope", "call_id": "call-x"}', "no workflow 'nope'"),
        ('{"workflow_slug": "desk", "call_id": "call-x", "user_data": [1]}', "user_data"),
    ],
)
async def test_a_bad_dispatch_fails_its_job_with_one_log_line_and_a_failed_call(
    lk: FakeLiveKitServer, tmp_path: Path, metadata: str, problem: str, capsys: pytest.CaptureFixture[str]
) -> None:
    async with running(lk, tmp_path) as (worker, _rooms, metering):
        job = await lk.dispatch(agent_name=AGENT, room="bad-room", metadata=metadata)
        async with asyncio.timeout(HANG_S):
            await job.status_reached(agent.JS_SUCCESS)  # ended, not hung (livekit reports success)
        assert worker.jobs_failed == 1
        call_id = "call-x" if "call-x" in metadata else job.id
        row = await call_row(metering, call_id)
    assert row is not None and row.status == "failed" and problem in row.ended_reason
    logged = [line for line in capsys.readouterr().out.splitlines() if "job_rejected" in line]
    assert len(logged) == 1 and problem in logged[0]


async def test_load_is_calls_against_the_maximum_or_cpu_against_its_ceiling_whichever_is_higher() -> None:
    cpu = [0.0]
    worker = Worker(
        WorkerConfig(url="ws://x", api_key="k", api_secret="s", max_calls=20, max_cpu=0.8),
        registry=WorkflowRegistry({}), providers=ProviderPool(instant_providers()), meter=None,
        cpu=lambda: cpu[0],
    )  # fmt: skip
    assert worker.load() == 0.0
    worker._jobs = 5
    assert worker.load() == pytest.approx(0.25)
    cpu[0] = 0.6  # 0.6 of a core against a ceiling of 0.8
    assert worker.load() == pytest.approx(0.75)
    cpu[0] = 1.5
    assert worker.load() == 1.0  # full: LiveKit sends the next call elsewhere
    cpu[0], worker._jobs = 0.0, 20
    assert worker.load() == 1.0
    worker._jobs, worker.draining = 0, True
    assert worker.load() == 1.0


async def test_a_full_worker_is_not_offered_more_calls(lk: FakeLiveKitServer, tmp_path: Path) -> None:
    async with running(lk, tmp_path, max_calls=1) as (_worker, rooms, _metering):
        first = await lk.dispatch(agent_name=AGENT, room="r1", metadata='{"workflow_slug": "desk"}')
        assert first.accepted
        await rooms.next(1)  # waiting for its caller: a call in progress
        fake_worker = await lk.worker_registered(AGENT)
        async with asyncio.timeout(HANG_S):
            await fake_worker.status_reached(agent.WS_FULL)
        second = await lk.dispatch(agent_name=AGENT, room="r2", metadata='{"workflow_slug": "desk"}')
        assert not second.accepted and len(rooms.made) == 1


async def test_drain_ends_calls_still_running_at_its_timeout_with_reason_drain(
    lk: FakeLiveKitServer, tmp_path: Path
) -> None:
    async with running(lk, tmp_path, drain_timeout_s=1) as (worker, rooms, metering):
        job = await lk.dispatch(
            agent_name=AGENT, room="r1", metadata='{"workflow_slug": "desk", "call_id": "call-d"}'
        )
        room = await rooms.next(1)
        mic = Microphone()
        async with speaking(mic):
            room.join("caller", microphone=mic)
            streams = room.local_participant.streams_changed
            async with asyncio.timeout(HANG_S):
                while not room.captions(track="TR_agent1"):
                    streams.clear()
                    await streams.wait()
            await asyncio.wait_for(worker.drain(), HANG_S)
            async with asyncio.timeout(HANG_S):
                await job.status_reached(agent.JS_SUCCESS)
        await mic.aclose()
        row = await call_row(metering, "call-d")
    assert row.status == "completed" and row.ended_reason == "drain"


async def test_one_process_takes_a_hundred_jobs_at_once(lk: FakeLiveKitServer, tmp_path: Path) -> None:
    async with running(lk, tmp_path, max_calls=100) as (worker, rooms, metering):
        # one after another, as rooms are created: an idle livekit-agents worker declines a second
        # offer while its first job is still being launched (its own estimate of a job's load)
        jobs = []
        for i in range(100):
            meta = json.dumps({"workflow_slug": "desk", "call_id": f"c{i}"})
            jobs.append(await lk.dispatch(agent_name=AGENT, room=f"r{i}", metadata=meta))
            await rooms.next(i + 1)
        assert all(job.accepted for job in jobs)
        async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{worker.port}/worker") as r:
            assert (await r.json())["calls"] == 100  # all waiting for their callers, at once
        for room in rooms.made:
            room.close()  # each room is deleted before its caller came
        async with asyncio.timeout(HANG_S):
            for job in jobs:
                await job.status_reached(agent.JS_SUCCESS)
        rows = [await call_row(metering, f"c{i}") for i in range(100)]
    assert {(row.status, row.ended_reason) for row in rows} == {("failed", "room_closed")}


async def test_a_call_that_asks_for_it_is_recorded_caller_left_agent_right(
    lk: FakeLiveKitServer, tmp_path: Path
) -> None:
    import soundfile

    from agent._recording_store import LocalRecordingStore

    store = LocalRecordingStore(tmp_path / "recordings")
    async with running(lk, tmp_path, recordings=store) as (_worker, rooms, metering):
        meta = {"workflow_slug": "desk", "call_id": "call-rec", "recording": True}
        job = await lk.dispatch(agent_name=AGENT, room="rec-room", metadata=json.dumps(meta))
        room = await rooms.next(1)
        mic = Microphone()
        streams = room.local_participant.streams_changed
        async with speaking(mic, 1.0):
            caller = room.join("caller", microphone=mic)
            async with asyncio.timeout(HANG_S):
                while len(room.captions(track="TR_agent1", final=True)) < 2:
                    streams.clear()
                    await streams.wait()
            room.leave(caller)
            async with asyncio.timeout(HANG_S):
                await job.status_reached(agent.JS_SUCCESS)
        await mic.aclose()
        row = await call_row(metering, "call-rec")
    assert row.recording is not None and row.recording.format == "flac"
    path = Path(row.recording.location.removeprefix("file://"))
    audio, rate = soundfile.read(path, dtype="int16")
    assert rate == 16_000 and audio.shape[1] == 2
    caller_side, agent_side = np.abs(audio[:, 0]).astype(int), np.abs(audio[:, 1]).astype(int)
    # the caller spoke (about 1 s above the noise floor) and the agent answered on its own channel
    assert (caller_side > 1000).sum() > 0.3 * rate and (agent_side > 1000).sum() > 0.2 * rate
    # each side's audio is on its own channel: the agent's tone is absent from the caller's side
    assert (caller_side[agent_side > 1000] > 1000).mean() < 0.2


async def test_a_job_livekit_terminates_ends_its_call_whole(lk: FakeLiveKitServer, tmp_path: Path) -> None:
    async with running(lk, tmp_path) as (_worker, rooms, metering):
        job = await lk.dispatch(
            agent_name=AGENT, room="t-room", metadata='{"workflow_slug": "desk", "call_id": "c-t"}'
        )
        room = await rooms.next(1)
        mic = Microphone()
        streams = room.local_participant.streams_changed
        async with speaking(mic):
            room.join("caller", microphone=mic)
            async with asyncio.timeout(HANG_S):
                while not room.captions(track="TR_agent1"):
                    streams.clear()
                    await streams.wait()
            await lk.terminate_job(job)  # what deleting the room through the API does
            async with asyncio.timeout(HANG_S):
                await job.status_reached(agent.JS_SUCCESS)
        await mic.aclose()
        row = await call_row(metering, "c-t")
    assert (row.status, row.ended_reason) == ("completed", "job_terminated")
    assert [e["content"] for e in row.transcript if e["role"] == "assistant"] == [
        "Hello, thanks for calling."
    ]
