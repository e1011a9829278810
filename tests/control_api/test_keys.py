"""API keys resolve to their tenant through a short cache (control_api/_keys.py), on a real ledger."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest_asyncio

from control_api._keys import KeyTenants
from metering import Ledger, load_catalog


class Timer:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest_asyncio.fixture
async def ledger(database_url: str) -> AsyncIterator[Ledger]:
    lg = await Ledger.open(database_url, catalog=load_catalog())
    yield lg
    await lg.aclose()


async def test_a_revoked_key_stops_working_once_its_remembered_tenant_expires(ledger: Ledger) -> None:
    timer = Timer()
    keys = KeyTenants(ledger, ttl_s=10.0, timer=timer)
    acme = await ledger.create_api_key("acme")
    assert await keys.tenant(acme.key) == "acme"
    assert await ledger.revoke_api_key(acme.id, tenant="acme")
    timer.now = 9.9
    assert await keys.tenant(acme.key) == "acme"  # the documented window: at most ttl_s
    timer.now = 10.1
    assert await keys.tenant(acme.key) is None
    timer.now = 10.2
    assert await keys.tenant(acme.key) is None


async def test_keys_resolve_to_their_own_tenants_and_unknown_keys_to_none(ledger: Ledger) -> None:
    keys = KeyTenants(ledger, timer=Timer())
    acme, globex = await ledger.create_api_key("acme"), await ledger.create_api_key("globex")
    assert [await keys.tenant(k.key) for k in (acme, globex, acme)] == ["acme", "globex", "acme"]
    assert await keys.tenant(acme.key + "x") is None
    assert await keys.tenant("") is None
