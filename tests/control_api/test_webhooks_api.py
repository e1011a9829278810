"""Webhook endpoints through the API: created and listed per tenant, and a call started through
the API reaches them signed, delivered from the ledger's outbox."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json

from aiohttp import web
from aiohttp.test_utils import TestServer

from metering import WebhookDeliverer
from tests.control_api.test_calls import Api, api  # noqa: F401 (the fixture)
from tests.fakes.webhook_receiver import WebhookReceiver


async def test_a_tenants_endpoint_receives_its_calls_events_signed(api: Api) -> None:  # noqa: F811
    got: list[tuple[dict[str, str], bytes]] = []
    arrived = asyncio.Event()

    async def receive(request: web.Request) -> web.Response:
        got.append((dict(request.headers), await request.read()))
        arrived.set()
        return web.Response(status=204)

    receiver_app = web.Application()
    receiver_app.router.add_post("/hook", receive)
    receiver = TestServer(receiver_app, host="127.0.0.1")
    await receiver.start_server()
    deliverer = WebhookDeliverer(api.ledger)
    try:
        status, endpoint = await api.req(
            "POST", "/api/v1/webhooks", json={"url": f"http://127.0.0.1:{receiver.port}/hook"}
        )
        assert status == 201 and endpoint["secret"].startswith("whsec_")
        status, listing = await api.req("GET", "/api/v1/webhooks")
        assert [e["id"] for e in listing["items"]] == [endpoint["id"]] and "secret" not in listing["items"][0]
        other = (await api.ledger.create_api_key("globex")).key
        assert (await api.req("GET", "/api/v1/webhooks", key=other))[1]["items"] == []
        assert (await api.req("DELETE", f"/api/v1/webhooks/{endpoint['id']}", key=other))[0] == 404

        _, call = await api.req(
            "POST", "/api/v1/calls", json={"workflow_slug": "reminders", "user_data": {"name": "A"}}
        )
        await deliverer.deliver_due()
        async with asyncio.timeout(30):
            await arrived.wait()
        headers, body = got[0]
        event = json.loads(body)
        assert event["type"] == "call.initiating" and event["call_id"] == call["call_id"]
        signed = f"{headers['Webhook-Timestamp']}.".encode() + body
        expected = hmac.new(endpoint["secret"].encode(), signed, hashlib.sha256).hexdigest()
        assert headers["Webhook-Signature"] == f"v1={expected}" and headers["Webhook-Id"] == event["id"]
        assert (await api.req("DELETE", f"/api/v1/webhooks/{endpoint['id']}"))[0] == 200
        assert (await api.req("GET", "/api/v1/webhooks"))[1]["items"] == []
    finally:
        await deliverer.aclose()
        await receiver.close()


async def test_an_event_the_api_queues_goes_out_at_once_not_at_the_deliverers_next_look(
    api: Api,  # noqa: F811
) -> None:
    # An hour between looks: only the write's wake-up can deliver it within the test.
    deliverer = WebhookDeliverer(api.ledger, idle_wait_s=3600)
    stop = asyncio.Event()
    running = asyncio.create_task(deliverer.run(stop))
    try:
        async with WebhookReceiver() as receiver:
            _, endpoint = await api.req("POST", "/api/v1/webhooks", json={"url": f"{receiver.url}/hook"})
            receiver.secret = endpoint["secret"]
            status, _ = await api.req(
                "POST", "/api/v1/calls", json={"workflow_slug": "reminders", "user_data": {"name": "A"}}
            )
            assert status == 201
            async with asyncio.timeout(30):
                await receiver.received(1)
            assert [r.event["type"] for r in receiver.requests] == ["call.initiating"]
    finally:
        stop.set()
        await running
        await deliverer.aclose()
