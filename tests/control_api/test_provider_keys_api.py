"""Provider keys through the API, on SQLite and PostgreSQL: created and listed masked per tenant,
deleted by their tenant only, refused when no master key is configured."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from cryptography.fernet import Fernet

from control_api import LiveKitCalls, LiveKitConfig, create_app
from metering import KeyCipher, Ledger, load_catalog
from tests.fakes.livekit_server import FakeLiveKitServer
from workflows import WorkflowRegistry

KEY = "sk-live-abcdefgh12345678"


class Api:
    def __init__(self, base: str, http: aiohttp.ClientSession, ledger: Ledger, key: str) -> None:
        self.base, self.http, self.ledger, self.key = base, http, ledger, key

    async def req(self, method: str, path: str, *, key: str | None = None, **kw: Any) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {self.key if key is None else key}"}
        async with self.http.request(method, self.base + path, headers=headers, **kw) as r:
            body = await r.text()
            return r.status, (json.loads(body) if body else None)


async def _serve(database_url: str, cipher: KeyCipher | None) -> AsyncIterator[Api]:
    lk = FakeLiveKitServer()
    await lk.start()
    ledger = await Ledger.open(database_url, catalog=load_catalog())
    livekit = LiveKitCalls(LiveKitConfig(url=lk.url, api_key=lk.api_key, api_secret=lk.api_secret))
    app = create_app(ledger, WorkflowRegistry({}), livekit, provider_keys=cipher)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        async with aiohttp.ClientSession() as http:
            key = (await ledger.create_api_key("acme")).key
            yield Api(f"http://127.0.0.1:{server.port}", http, ledger, key)
    finally:
        await server.close()
        await livekit.aclose()
        await ledger.aclose()
        await lk.aclose()


@pytest.fixture
def cipher() -> KeyCipher:
    return KeyCipher([Fernet.generate_key().decode()])


@pytest.fixture
async def api(database_url: str, cipher: KeyCipher) -> AsyncIterator[Api]:
    async for a in _serve(database_url, cipher):
        yield a


@pytest.fixture
async def api_off(database_url: str) -> AsyncIterator[Api]:
    async for a in _serve(database_url, None):
        yield a


async def test_a_key_is_created_listed_masked_and_deleted(api: Api, cipher: KeyCipher) -> None:
    status, created = await api.req(
        "POST",
        "/api/v1/provider-keys",
        json={"provider_type": "llm", "provider_name": "openai", "api_key": KEY, "is_default": True},
    )
    assert status == 201, created
    assert created["masked_key"] == "****5678" and created["is_default"] is True
    assert set(created) == {"id", "provider_type", "provider_name", "is_default", "masked_key", "created_at"}
    assert created["created_at"].endswith("Z")
    status, listing = await api.req("GET", "/api/v1/provider-keys")
    assert status == 200 and listing == {"items": [created]}
    assert KEY not in json.dumps(listing)
    assert await api.ledger.tenant_credentials("acme", cipher=cipher) == {"openai": {"api_key": KEY}}

    other = (await api.ledger.create_api_key("globex")).key
    assert await api.req("GET", "/api/v1/provider-keys", key=other) == (200, {"items": []})
    assert await api.req("DELETE", f"/api/v1/provider-keys/{created['id']}", key=other) == (
        404,
        {"error": "no such provider key"},
    )
    assert await api.req("DELETE", f"/api/v1/provider-keys/{created['id']}") == (204, None)
    assert (await api.req("DELETE", f"/api/v1/provider-keys/{created['id']}"))[0] == 404
    assert await api.req("GET", "/api/v1/provider-keys") == (200, {"items": []})


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"provider_type": "llm", "provider_name": "openai", "api_key": "short"}, "api_key"),
        ({"provider_type": "llm", "provider_name": "openai", "api_key": "x" * 513}, "api_key"),
        ({"provider_type": "asr", "provider_name": "openai", "api_key": KEY}, "provider_type"),
        ({"provider_type": "tts", "provider_name": "hibari", "api_key": KEY}, "provider_name"),
        ({"provider_type": "llm", "provider_name": "openai", "api_key": KEY, "org": "x"}, "org"),
        ({"provider_type": "llm", "provider_name": "openai"}, "api_key"),
    ],
)
async def test_a_bad_key_is_refused_with_the_field_named_and_never_echoed(
    api: Api, body: dict[str, Any], field: str
) -> None:
    status, answer = await api.req("POST", "/api/v1/provider-keys", json=body)
    assert status == 422 and answer["error"] == "invalid request", answer
    assert any(d["field"] == field for d in answer["details"]), answer
    assert KEY not in json.dumps(answer)
    assert await api.ledger.provider_keys("acme") == ()


async def test_without_a_master_key_the_routes_are_off(api_off: Api) -> None:
    off = {"error": "provider keys are off: set VOICERUN_MASTER_KEYS"}
    assert await api_off.req("GET", "/api/v1/provider-keys") == (409, off)
    body = {"provider_type": "llm", "provider_name": "openai", "api_key": KEY}
    assert await api_off.req("POST", "/api/v1/provider-keys", json=body) == (409, off)
    assert await api_off.req("DELETE", "/api/v1/provider-keys/some-id") == (409, off)
    assert (await api_off.req("GET", "/api/v1/provider-keys", key="vr_nope_nope"))[0] == 401
