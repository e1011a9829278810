"""The control API on a real server on 127.0.0.1, on SQLite and PostgreSQL, with LiveKit's
Twirp APIs answered by the fake server (which records the protobuf requests)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
from aiohttp.test_utils import TestServer
from cryptography.fernet import Fernet

from control_api import LiveKitCalls, LiveKitConfig, LocalCounter, RateLimiter, create_app
from metering import CallClosed, CallOpened, KeyCipher, Ledger, RecordingStored, TurnReported, load_catalog
from tests.agent.test_call_recording_store import aws_env, s3_endpoint  # noqa: F401 (fixtures)
from tests.fakes.livekit_server import FakeLiveKitServer
from workflows import WorkflowRegistry, load_workflow_text

WORKFLOW = """
version: 1
slug: reminders
start: host
variables:
  name: {type: string, required: true}
  age: {type: integer}
agents:
  host:
    instructions: Remind {{user.name}}.
"""


class Api:
    def __init__(self, base: str, http: aiohttp.ClientSession, ledger: Ledger, lk: FakeLiveKitServer) -> None:
        self.base, self.http, self.ledger, self.lk = base, http, ledger, lk
        self.key = ""
        self.app: Any = None
        self.livekit: Any = None

    async def req(
        self,
        method: str,
        path: str,
        *,
        key: str | None = None,
        headers: dict[str, str] | None = None,
        **kw: Any,
    ) -> tuple[int, Any]:
        key = key if key is not None else self.key
        headers = {**({"Authorization": f"Bearer {key}"} if key else {}), **(headers or {})}
        async with self.http.request(method, self.base + path, headers=headers, **kw) as r:
            text = await r.text()
            return r.status, (json.loads(text) if text else None)


@pytest.fixture
async def api(database_url: str, tmp_path: Path) -> AsyncIterator[Api]:
    lk = FakeLiveKitServer()
    await lk.start()
    ledger = await Ledger.open(database_url, catalog=load_catalog())
    workflow = load_workflow_text(WORKFLOW)
    livekit = LiveKitCalls(LiveKitConfig(url=lk.url, api_key=lk.api_key, api_secret=lk.api_secret))
    # rate limits out of the way (test_rate_limits.py tests them): schemathesis sends hundreds
    generous = RateLimiter(
        LocalCounter(), dict.fromkeys(("dial", "create", "status", "list", "other"), 1_000_000)
    )
    app = create_app(
        ledger,
        WorkflowRegistry({workflow.slug: (workflow, Path("r.yaml"))}),
        livekit,
        limiter=generous,
        provider_keys=KeyCipher([Fernet.generate_key().decode()]),
    )
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    async with aiohttp.ClientSession() as http:
        a = Api(f"http://127.0.0.1:{server.port}", http, ledger, lk)
        a.key = (await ledger.create_api_key("acme")).key
        a.app = app
        a.livekit = livekit
        try:
            yield a
        finally:
            await server.close()
            await livekit.aclose()
            await ledger.aclose()
            await lk.aclose()


async def test_starting_a_call_creates_its_room_and_dispatches_the_agent(api: Api) -> None:
    status, body = await api.req(
        "POST", "/api/v1/calls",
        json={"workflow_slug": "reminders", "user_id": "u-1", "user_data": {"name": "Ada"}, "metadata": {"k": 1}},
    )  # fmt: skip
    assert status == 201, body
    call_id, room = body["call_id"], body["room_name"]
    assert room == f"call-{call_id}" and body["livekit_url"] == api.lk.url and body["status"] == "pending"
    claims = jwt.decode(body["token"], api.lk.api_secret, algorithms=["HS256"])
    assert claims["video"]["room"] == room and claims["video"]["roomJoin"] is True
    (created,) = api.lk.calls_to("CreateRoom")
    assert created.request.name == room
    (dispatch,) = api.lk.calls_to("CreateDispatch")
    assert dispatch.request.agent_name == "voicerun" and dispatch.request.room == room
    job = json.loads(dispatch.request.metadata)
    assert job == {
        "workflow_slug": "reminders", "call_id": call_id, "user_id": "u-1", "user_data": {"name": "Ada"},
        "metadata": {"k": 1}, "tenant": "acme", "direction": "web",
    }  # fmt: skip
    status, call = await api.req("GET", f"/api/v1/calls/{call_id}")
    assert status == 200 and call["status"] == "pending" and call["user_id"] == "u-1"
    status, active = await api.req("GET", "/api/v1/calls/active")
    assert [c["id"] for c in active] == [call_id]


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ({"workflow_slug": "reminders"}, 422, "user_data"),  # name is required
        ({"workflow_slug": "reminders", "user_data": {"name": "A", "age": "old"}}, 422, "user_data"),
        ({"workflow_slug": "nope", "user_data": {"name": "A"}}, 422, "workflow_slug"),
        ({"workflow_slug": "reminders", "user_data": {"name": "A"}, "colour": "red"}, 422, "colour"),
    ],
)
async def test_a_bad_start_request_is_refused_with_the_field_named(
    api: Api, body: dict[str, Any], status: int, field: str
) -> None:
    got, answer = await api.req("POST", "/api/v1/calls", json=body)
    assert got == status and answer["error"] == "invalid request"
    assert any(d["field"] == field for d in answer["details"]), answer
    assert not api.lk.calls_to("CreateRoom")


async def test_hostile_requests_get_clear_errors_not_stack_traces(api: Api) -> None:
    assert (await api.req("GET", "/api/v1/calls", key="vr_nope_nope"))[0] == 401
    api_key, api.key = api.key, ""
    status, body = await api.req("GET", "/api/v1/calls")
    assert status == 401 and "Bearer" in body["error"]
    api.key = api_key
    status, body = await api.req(
        "POST", "/api/v1/calls", data=b"{", headers={"Content-Type": "application/json"}
    )
    assert status == 400 and body == {"error": "the body is not valid JSON"}
    status, body = await api.req("POST", "/api/v1/calls", data=b"x", headers={"Content-Type": "text/plain"})
    assert status == 415
    status, body = await api.req(
        "POST", "/api/v1/calls", json={"workflow_slug": "r", "metadata": {"x": "y" * 70_000}}
    )
    assert status == 413 and "larger than" in body["error"]
    status, body = await api.req("GET", "/api/v1/calls?page_size=500")
    assert status == 400 and "page_size" in body["error"]
    status, body = await api.req("GET", "/api/v1/calls/not-a-call")
    assert status == 404 and body == {"error": "no such call"}


async def test_another_tenants_call_is_a_404_on_every_call_route(api: Api) -> None:
    _, body = await api.req(
        "POST", "/api/v1/calls", json={"workflow_slug": "reminders", "user_data": {"name": "A"}}
    )
    call_id = body["call_id"]
    other = (await api.ledger.create_api_key("globex")).key
    for method, path in [
        ("GET", f"/api/v1/calls/{call_id}"),
        ("GET", f"/api/v1/calls/{call_id}/transcript"),
        ("GET", f"/api/v1/calls/{call_id}/metrics"),
        ("POST", f"/api/v1/calls/{call_id}/end"),
    ]:
        status, answer = await api.req(method, path, key=other)
        assert (status, answer) == (404, {"error": "no such call"}), path
    assert (await api.req("GET", "/api/v1/calls", key=other))[1]["total"] == 0
    assert (await api.req("GET", "/api/v1/calls/active", key=other))[1] == []
    assert not api.lk.calls_to("DeleteRoom")


async def test_a_finished_call_reads_back_with_transcript_and_metrics(api: Api) -> None:
    t0 = datetime(2026, 3, 1, 10, 0, tzinfo=UTC)
    transcript = [
        {
            "role": "system",
            "content": "Call started",
            "timestamp": "2026-03-01T10:00:00.000Z",
            "agent_name": "host",
        },
        {
            "role": "assistant",
            "content": "Hello Ada",
            "timestamp": "2026-03-01T10:00:01.000Z",
            "agent_name": "host",
        },
    ]
    await api.ledger.write([
        CallOpened(call_id="c-1", workflow_slug="reminders", started_at=t0, tenant="acme", user_id="u-9"),
        TurnReported(call_id="c-1", turn=0, agent="host", eou_delay_ms=300, stt_latency_ms=120, llm_ttft_ms=280,
                     tts_ttfb_ms=80, e2e_latency_ms=700, interrupted=False, at=t0),
        TurnReported(call_id="c-1", turn=1, agent="host", eou_delay_ms=300, stt_latency_ms=140, llm_ttft_ms=300,
                     tts_ttfb_ms=90, e2e_latency_ms=740, interrupted=False, at=t0),
        CallClosed(call_id="c-1", status="completed", reason="user_ended", ended_at=t0.replace(minute=3),
                   duration_s=180.0, transcript=tuple(transcript), agent_history=("host",)),
    ])  # fmt: skip
    status, call = await api.req("GET", "/api/v1/calls/c-1")
    assert status == 200
    assert {k: call[k] for k in ("status", "duration_seconds", "agent_history", "started_at", "ended_at")} == {
        "status": "completed", "duration_seconds": 180.0, "agent_history": ["host"],
        "started_at": "2026-03-01T10:00:00Z", "ended_at": "2026-03-01T10:03:00Z",
    }  # fmt: skip
    assert (await api.req("GET", "/api/v1/calls/c-1/transcript"))[1] == transcript
    status, metrics = await api.req("GET", "/api/v1/calls/c-1/metrics")
    assert metrics["stt_latency_ms"] == 130.0 and metrics["llm_latency_ms"] == 290.0
    assert metrics["tts_latency_ms"] == 85.0 and metrics["turns"] == 2 and metrics["agent_handoffs"] == 0
    status, page = await api.req("GET", "/api/v1/calls?status=completed&user_id=u-9")
    assert (page["total"], page["pages"], [c["id"] for c in page["items"]]) == (1, 1, ["c-1"])
    status, page = await api.req("GET", "/api/v1/calls?started_after=2026-03-02T00:00:00Z")
    assert page["total"] == 0


async def test_ending_a_call_is_idempotent_and_names_the_reason_for_the_worker(api: Api) -> None:
    _, body = await api.req(
        "POST", "/api/v1/calls", json={"workflow_slug": "reminders", "user_data": {"name": "A"}}
    )
    call_id, room = body["call_id"], body["room_name"]
    status, ended = await api.req("POST", f"/api/v1/calls/{call_id}/end")
    assert status == 200 and ended["ended_reason"] == "api" and ended["status"] == "completed"
    (meta,) = api.lk.calls_to("UpdateRoomMetadata")
    assert meta.request.room == room and json.loads(meta.request.metadata) == {"voicerun.end_reason": "api"}
    assert [c.request.room for c in api.lk.calls_to("DeleteRoom")] == [room]
    status, again = await api.req("POST", f"/api/v1/calls/{call_id}/end")
    assert status == 200 and again == ended and len(api.lk.calls_to("DeleteRoom")) == 1


async def test_workflows_are_discoverable_with_their_variables(api: Api) -> None:
    status, listing = await api.req("GET", "/api/v1/workflows")
    assert status == 200 and [w["slug"] for w in listing["items"]] == ["reminders"]
    status, one = await api.req("GET", "/api/v1/workflows/reminders")
    assert one["variables"]["name"]["required"] is True and one["variables"]["age"]["type"] == "integer"
    assert (await api.req("GET", "/api/v1/workflows/nope"))[0] == 404


async def test_health_and_readiness_need_no_key(api: Api) -> None:
    api.key = ""
    assert await api.req("GET", "/healthz") == (200, {"status": "ok"})
    assert await api.req("GET", "/readyz") == (200, {"status": "ready"})


async def test_dialling_rings_the_number_through_the_trunk_into_the_calls_room(api: Api) -> None:
    assert (await api.req("POST", "/api/v1/calls/dial", json={}))[0] == 409  # no trunk configured
    api.livekit.config = dataclasses.replace(api.livekit.config, sip_trunk_id="ST_out")
    body = {"workflow_slug": "reminders", "to_number": "+14155550123", "from_number": "+14155550100",
            "user_data": {"name": "Ada"}, "max_duration": 120, "recording": True}  # fmt: skip
    status, dialed = await api.req("POST", "/api/v1/calls/dial", json=body)
    assert status == 201, dialed
    call_id, room = dialed["call_id"], dialed["room_name"]
    (sip,) = api.lk.calls_to("CreateSIPParticipant")
    req = sip.request
    assert (req.sip_trunk_id, req.sip_call_to, req.sip_number, req.room_name) == (
        "ST_out", "+14155550123", "+14155550100", room,
    )  # fmt: skip
    assert req.max_call_duration.seconds == 120
    (dispatch,) = api.lk.calls_to("CreateDispatch")
    job = json.loads(dispatch.request.metadata)
    assert (job["direction"], job["recording"], job["max_duration"], job["call_id"]) == (
        "outbound",
        True,
        120,
        call_id,
    )
    status, call = await api.req("GET", f"/api/v1/calls/{call_id}")
    assert call["direction"] == "outbound" and call["status"] == "pending"
    for bad in ({**body, "to_number": "555-0123"}, {**body, "max_duration": 5}):
        status, answer = await api.req("POST", "/api/v1/calls/dial", json=bad)
        assert status == 422 and answer["details"], bad


async def recording_app(api: Api, store: Any) -> tuple[TestServer, str]:
    """The API serving recordings from `store`, with call c-rec recorded there and c-none not."""
    t0 = datetime(2026, 3, 1, 10, 0, tzinfo=UTC)
    location = await store.save("acme/c-rec.flac", FLAC, "audio/flac")
    server = TestServer(
        create_app(api.ledger, WorkflowRegistry({}), api.livekit, recordings=store), host="127.0.0.1"
    )
    await server.start_server()
    await api.ledger.write([
        CallOpened(call_id="c-rec", workflow_slug="reminders", started_at=t0, tenant="acme"),
        CallOpened(call_id="c-none", workflow_slug="reminders", started_at=t0, tenant="acme"),
        CallClosed(call_id="c-rec", status="completed", reason="user_ended", ended_at=t0, duration_s=60.0),
        RecordingStored(call_id="c-rec", location=location, format="flac", duration_s=60.0, at=t0),
    ])  # fmt: skip
    return server, f"http://127.0.0.1:{server.port}/api/v1/calls"


FLAC = b"fLaC\x00\x00\x00\x22" + bytes(range(256))


async def test_a_calls_recording_is_served_to_its_tenant_only(api: Api, tmp_path: Path) -> None:
    from agent._recording_store import LocalRecordingStore

    server, base = await recording_app(api, LocalRecordingStore(tmp_path / "recordings"))
    auth = {"Authorization": f"Bearer {api.key}"}
    try:
        async with api.http.get(f"{base}/c-rec/recording", headers=auth) as r:
            assert r.status == 200 and r.content_type == "audio/flac"
            assert await r.read() == FLAC
        async with api.http.get(f"{base}/c-rec/recording?url=true", headers=auth) as r:
            assert r.status == 409 and "url=true" in (await r.json())["error"]  # a disk has no URLs
        async with api.http.get(f"{base}/c-rec/recording?url=maybe", headers=auth) as r:
            assert r.status == 400
        async with api.http.get(f"{base}/c-none/recording", headers=auth) as r:
            assert r.status == 404 and (await r.json())["error"] == "this call has no recording"
        other = (await api.ledger.create_api_key("globex")).key
        async with api.http.get(f"{base}/c-rec/recording", headers={"Authorization": f"Bearer {other}"}) as r:
            assert r.status == 404
        (tmp_path / "recordings" / "acme" / "c-rec.flac").unlink()  # lost from the store
        async with api.http.get(f"{base}/c-rec/recording", headers=auth) as r:
            assert r.status == 502 and "could not be read" in (await r.json())["error"]
    finally:
        await server.close()


async def test_an_s3_recording_is_also_offered_as_a_url_that_expires(
    api: Api,
    s3_endpoint: str,  # noqa: F811 (the fixture)
    aws_env: None,  # noqa: F811
) -> None:
    from agent._recording_store import S3RecordingStore

    store = S3RecordingStore("recordings", "calls", endpoint_url=s3_endpoint, region="us-east-1")
    server, base = await recording_app(api, store)
    auth = {"Authorization": f"Bearer {api.key}"}
    try:
        async with api.http.get(f"{base}/c-rec/recording", headers=auth) as r:
            assert r.status == 200 and await r.read() == FLAC
        async with api.http.get(f"{base}/c-rec/recording?url=true", headers=auth) as r:
            assert r.status == 200
            link = await r.json()
        assert link["format"] == "flac" and link["expires_at"].endswith("Z")
        assert "X-Amz-Expires=900" in link["url"] and "X-Amz-Signature=" in link["url"]
        async with aiohttp.ClientSession() as anyone:  # no API key: the URL is the credential
            async with anyone.get(link["url"]) as r:
                assert r.status == 200 and await r.read() == FLAC
    finally:
        await server.close()


async def test_a_client_that_leaves_mid_request_is_logged_as_gone_not_as_a_server_error(api: Api) -> None:
    import asyncio
    import socket
    import struct

    from aiohttp import web
    from structlog.testing import capture_logs

    # Served as `voicerun api` serves it: aiohttp's test server would cancel the handler instead.
    runner = web.AppRunner(api.app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        with capture_logs() as logs:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(
                b"POST /api/v1/calls HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                + f"Authorization: Bearer {api.key}\r\nContent-Length: 5000\r\n".encode()
                + b"Expect: 100-continue\r\n\r\n"
            )
            # The server has the request in hand once it asks for the body.
            assert (await reader.readline()).startswith(b"HTTP/1.1 100")
            writer.write(b'{"workflow_slug": ')
            await writer.drain()
            # Reset before the body's end (as a killed client or a proxy does).
            writer.get_extra_info("socket").setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
            )
            writer.close()
            for _ in range(3000):  # the server notices on its own schedule (30 s: a loaded CI)
                if any(e["event"].startswith("api_") for e in logs):
                    break
                await asyncio.sleep(0.01)
    finally:
        await runner.cleanup()
    events = [e["event"] for e in logs]
    assert "api_client_disconnected" in events and "api_internal_error" not in events
    assert (await api.req("GET", "/api/v1/calls"))[1]["total"] == 0


async def test_a_call_livekit_cannot_start_answers_502_and_is_failed_with_livekits_error(api: Api) -> None:
    api.lk.fail_next("CreateDispatch", "unavailable", "no agent dispatch service in this region")
    status, body = await api.req(
        "POST", "/api/v1/calls", json={"workflow_slug": "reminders", "user_data": {"name": "A"}}
    )
    assert status == 502 and body == {"error": "LiveKit could not start the call: ServerError"}
    (call,) = (await api.req("GET", "/api/v1/calls"))[1]["items"]
    status, call = await api.req("GET", f"/api/v1/calls/{call['id']}")
    assert call["status"] == "failed" and call["duration_seconds"] == 0.0
    # The whole error (longer than an ordinary reason), on PostgreSQL as on SQLite.
    assert call["ended_reason"] == (
        "livekit: ServerError: ServerError(code=unavailable, message=no agent dispatch service in this region, "
        "status=503)"
    )
