"""A dispatched call in a room: the room's events (a test's object with rtc.Room's interface),
real audio through livekit's loopback, instant providers; the SIP transfer and room deletion
against the fake LiveKit server's Twirp stub."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

import numpy as np
import pytest
from livekit import rtc

from agent._dispatch import Dispatch
from agent._providers import ProviderPool
from agent._room_call import CallHost, RoomCall
from agent._worker import LiveKitServices, WorkerConfig
from pipeline import SAMPLE_RATE, RealClock
from pipeline.testing import instant_providers, speech_like
from tests.fakes.livekit_server import FakeLiveKitServer
from tests.fakes.room import Microphone, TestRoom
from workflows import WorkflowRegistry, load_workflow_text

WAIT_S = 20  # a safety net for a broken build, not a synchronisation

WORKFLOW = """
version: 1
slug: desk
start: desk
defaults:
  llm: {provider: rules}
  turn: {end_of_turn: silence, end_of_speech_ms: 300}
agents:
  desk:
    instructions: Front desk.
    greeting: Hello, thanks for calling.
    tools: [transfer_call]
    rules:
      - dtmf: "1"
        say: You pressed one.
      - keywords: [human]
        say: Transferring you now.
        tool: {name: transfer_call, arguments: {phone_number: "+14155550123"}}
      - keywords: [order]
        say: Your order is on its way.
"""


def host(transcript: str, services: LiveKitServices | None = None) -> CallHost:
    workflow = load_workflow_text(WORKFLOW)
    return CallHost(
        registry=WorkflowRegistry({workflow.slug: (workflow, __import__("pathlib").Path("desk.yaml"))}),
        providers=ProviderPool(instant_providers(transcript=transcript)),
        clock=RealClock(),
        services=services,
    )


async def until(event: asyncio.Event, check: Callable[[], bool]) -> None:
    async with asyncio.timeout(WAIT_S):
        while not check():
            event.clear()
            await event.wait()


@contextlib.asynccontextmanager
async def speaking(mic: Microphone, *utterances: float) -> AsyncIterator[None]:
    """The caller's microphone: each utterance (seconds of speech) then 1 s of silence, then
    silence until the block ends, as an open microphone sends."""

    async def play() -> None:
        await mic.play(np.zeros(SAMPLE_RATE // 2, np.int16))
        for k, seconds in enumerate(utterances):
            await mic.play(speech_like(seconds, seed=k))
            await mic.play(np.zeros(SAMPLE_RATE, np.int16))
        while True:
            await mic.play(np.zeros(SAMPLE_RATE // 5, np.int16))

    task = asyncio.create_task(play())
    try:
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def start(room: TestRoom, h: CallHost, metadata: str = '{"workflow_slug": "desk"}') -> asyncio.Task:
    dispatch = Dispatch.parse(metadata)
    return asyncio.create_task(RoomCall(room, dispatch, h, workflow=h.registry.get("desk")).run())


async def test_a_web_caller_is_greeted_answered_captioned_and_the_call_ends_when_they_leave() -> None:
    room, mic, h = TestRoom(), Microphone(), host("where is my order")
    task = start(room, h)
    streams = room.local_participant.streams_changed
    async with speaking(mic, 1.0):
        caller = room.join("caller", microphone=mic)
        await until(streams, lambda: len(room.captions(track="TR_agent1", final=True)) >= 2)
        assert [c.text for c in room.captions(track="TR_agent1")] == [
            "Hello, thanks for calling.",
            "Your order is on its way.",
        ]
        said = room.captions(track="TR_caller", final=True)
        assert [c.text for c in said] == ["where is my order"]
        assert said[0].sender_identity == "caller"  # clients show the caption under the caller
        # one segment per utterance: its interim captions (if any) share the final's id
        assert {c.attributes["lk.segment_id"] for c in room.captions(track="TR_caller")} == {
            said[0].attributes["lk.segment_id"]
        }
        room.leave(caller)
        record = await asyncio.wait_for(task, WAIT_S)
    assert record.status == "completed" and record.summary is not None
    assert record.summary.reason == "user_ended"
    assert room.disconnects == 1 and not h.calls
    await mic.aclose()


async def test_keys_pressed_on_the_phone_reach_the_workflows_dtmf_rules() -> None:
    room, mic, h = TestRoom(), Microphone(), host("unused")
    task = start(room, h)
    streams = room.local_participant.streams_changed
    async with speaking(mic):
        caller = room.join("sip_caller", kind=rtc.ParticipantKind.PARTICIPANT_KIND_SIP,
                           attributes={"sip.callStatus": "active"}, microphone=mic)  # fmt: skip
        await until(streams, lambda: len(room.captions(track="TR_agent1")) >= 1)  # the greeting
        room.press(caller, "1")
        await until(streams, lambda: len(room.captions(track="TR_agent1")) >= 2)
        assert room.captions(track="TR_agent1")[-1].text == "You pressed one."
        room.close()  # the room is deleted under the call
        record = await asyncio.wait_for(task, WAIT_S)
    assert record.summary is not None and record.summary.reason == "room_deleted"
    assert any(e.get("content") == "[keypad] 1" for e in record.transcript)
    await mic.aclose()


@pytest.fixture
async def livekit() -> AsyncIterator[FakeLiveKitServer]:
    server = FakeLiveKitServer()
    await server.start()
    try:
        yield server
    finally:
        await server.aclose()


def services_for(server: FakeLiveKitServer) -> LiveKitServices:
    return LiveKitServices(WorkerConfig(url=server.url, api_key=server.api_key, api_secret=server.api_secret))


async def test_transfer_call_asks_livekit_sip_to_transfer_the_phone_caller(
    livekit: FakeLiveKitServer,
) -> None:
    services = services_for(livekit)
    room, mic, h = TestRoom("call-transfer"), Microphone(), host("get me a human", services)
    livekit.add_room("call-transfer")
    livekit.add_sip_participant("call-transfer", "sip_caller")
    task = start(room, h)
    try:
        async with speaking(mic, 1.0):
            room.join("sip_caller", kind=rtc.ParticipantKind.PARTICIPANT_KIND_SIP,
                      attributes={"sip.callStatus": "active"}, microphone=mic)  # fmt: skip
            record = await asyncio.wait_for(task, WAIT_S)
    finally:
        await services.aclose()
    transfers = livekit.calls_to("TransferSIPParticipant")
    assert len(transfers) == 1
    req = transfers[0].request
    assert (req.room_name, req.participant_identity, req.transfer_to) == (
        "call-transfer",
        "sip_caller",
        "tel:+14155550123",
    )
    assert record.summary is not None and record.summary.reason == "agent_ended"
    tool = next(e for e in record.transcript if "tool_call" in e)
    assert tool["tool_call"]["name"] == "transfer_call" and tool["tool_result"]["ok"] is True
    # the agent ended the call: the room is deleted, which hangs up anyone left in it
    assert [c.request.room for c in livekit.calls_to("DeleteRoom")] == ["call-transfer"]
    await mic.aclose()


@pytest.mark.parametrize(
    ("reason", "status"),
    [
        (rtc.DisconnectReason.USER_UNAVAILABLE, "no_answer"),
        (rtc.DisconnectReason.USER_REJECTED, "busy"),
        (rtc.DisconnectReason.SIP_TRUNK_FAILURE, "failed"),
    ],
)
async def test_a_dialled_phone_that_does_not_answer_sets_the_calls_status(
    livekit: FakeLiveKitServer, reason: int, status: str
) -> None:
    services = services_for(livekit)
    room, h = TestRoom("call-dial"), host("unused", services)
    livekit.add_room("call-dial")
    task = start(room, h, '{"workflow_slug": "desk", "direction": "outbound"}')
    callee = room.join(
        "phone", kind=rtc.ParticipantKind.PARTICIPANT_KIND_SIP, attributes={"sip.callStatus": "dialing"}
    )
    room.set_attributes(callee, **{"sip.callStatus": "ringing"})
    room.leave(callee, reason)
    try:
        record = await asyncio.wait_for(task, WAIT_S)
    finally:
        await services.aclose()
    assert record.status == status and record.summary is None
    assert not room.local_participant.published  # nobody answered: the agent never spoke
    assert [c.request.room for c in livekit.calls_to("DeleteRoom")] == ["call-dial"]


async def test_the_control_api_ends_a_call_by_naming_its_reason_in_the_rooms_metadata() -> None:
    room, mic, h = TestRoom(), Microphone(), host("unused")
    task = start(room, h)
    streams = room.local_participant.streams_changed
    async with speaking(mic):
        room.join("caller", microphone=mic)
        await until(streams, lambda: len(room.captions(track="TR_agent1")) >= 1)
        room.set_metadata('{"other": 1}')  # anything else in the metadata is not an end
        room.set_metadata('{"voicerun.end_reason": "made-up"}')  # nor a reason it does not know
        room.set_metadata('{"voicerun.end_reason": "api"}')
        record = await asyncio.wait_for(task, WAIT_S)
    assert record.status == "completed" and record.summary is not None
    assert record.summary.reason == "api"
    await mic.aclose()


async def test_a_tenants_calls_use_its_own_provider_keys_else_the_processs() -> None:
    class Clock:
        t = 0.0

        def now(self) -> float:
            return self.t

    asked: list[str] = []
    stored = {"acme": {"openai": {"api_key": "sk-acme-1"}}}

    async def credentials(tenant: str) -> dict[str, dict[str, str]]:
        asked.append(tenant)
        return dict(stored.get(tenant, {}))

    h = host("unused")
    clock = Clock()
    h.clock, h.credentials = clock, credentials  # type: ignore[assignment]
    acme = await h.providers_for("acme")
    assert acme is not h.providers and acme._credentials == {"openai": {"api_key": "sk-acme-1"}}
    assert await h.providers_for("globex") is h.providers  # no keys stored: the environment's
    assert await h.providers_for(None) is h.providers
    assert await h.providers_for("acme") is acme and asked == ["acme", "globex"]  # cached
    stored["acme"] = {"openai": {"api_key": "sk-acme-2"}}
    clock.t += 61  # a key changed through the API reaches new calls within a minute
    renewed = await h.providers_for("acme")
    assert renewed is not acme and renewed._credentials == {"openai": {"api_key": "sk-acme-2"}}
    await h.aclose()
