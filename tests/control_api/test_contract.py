"""The API against its own description: every route in the route table is scoped by tenant and
documented, and schemathesis fuzzes the served OpenAPI document (no 5xx, no answer that breaks
the schema)."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest

from control_api import OPENAPI_PATH, route_table
from tests.control_api.test_calls import Api, api  # noqa: F401 (the fixture)

HANG_S = 300  # a safety net for a broken build, not a synchronisation


def _path(template: str, call_id: str) -> str:
    return template.replace("{id}", call_id).replace("{slug}", "reminders")


async def test_every_scoped_route_hides_another_tenants_call_and_needs_a_key(api: Api) -> None:  # noqa: F811
    _, started = await api.req(
        "POST", "/api/v1/calls", json={"workflow_slug": "reminders", "user_data": {"name": "A"}}
    )
    call_id = started["call_id"]
    other = (await api.ledger.create_api_key("globex")).key
    app_routes = route_table(api.app)
    assert app_routes, "the app has a route table"
    for route in app_routes:
        path = _path(route.path, call_id)
        if route.public:
            status, _ = await api.req(route.method, path, key="")
            assert status == 200, route.path
            continue
        # without a key: 401, whatever the route
        status, body = await api.req(route.method, path, key="", json={} if route.body else None)
        assert status == 401 and "error" in body, route.path
        if route.path.startswith("/api/v1/calls/{id}"):  # a call's route: another tenant's call is not there
            status, body = await api.req(route.method, path, key=other)
            assert (status, body) == (404, {"error": "no such call"}), route.path
        elif "{id}" in route.path:  # another resource's: nothing of another tenant's either
            status, body = await api.req(route.method, path, key=other)
            assert status == 404 and body["error"].startswith("no such"), route.path
    assert not api.lk.calls_to("DeleteRoom")  # no other tenant ended the call


async def test_the_openapi_document_describes_every_route(api: Api) -> None:  # noqa: F811
    status, doc = await api.req("GET", OPENAPI_PATH, key="")
    assert status == 200 and doc["openapi"] == "3.1.0"
    documented = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    assert {(r.method, r.path) for r in route_table(api.app)} == documented
    start = doc["paths"]["/api/v1/calls"]["post"]
    schema = doc["components"]["schemas"]["StartCall"]
    assert start["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/StartCall"
    }
    assert schema["additionalProperties"] is False and schema["required"] == ["workflow_slug"]


@pytest.mark.skipif(sys.platform != "linux", reason="schemathesis runs as a subprocess here")
async def test_schemathesis_finds_no_server_error_and_no_answer_outside_the_schema(
    api: Api,  # noqa: F811
    tmp_path: Path,
) -> None:
    url = api.base + OPENAPI_PATH
    proc = await asyncio.create_subprocess_exec(
        os.path.join(os.path.dirname(sys.executable), "schemathesis"), "run", url,
        "--header", f"Authorization: Bearer {api.key}",
        "--checks", "not_a_server_error,response_schema_conformance,content_type_conformance",
        "--max-examples", "25", "--seed", "1", "--generation-deterministic", "--request-timeout", "30",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, cwd=tmp_path,  # its cache dir goes there
        # the fuzzer is a tool, not the code under test: a date-shifting LD_PRELOAD (a faketime
        # run of the suite) deadlocks its threads; the API it fuzzes runs in this process
        env={k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "FAKETIME", "FAKETIME_SHARED")},
    )  # fmt: skip
    try:
        async with asyncio.timeout(HANG_S):
            out, _ = await proc.communicate()
    finally:
        if proc.returncode is None:  # timed out: the fuzzer must not outlive the test
            proc.kill()
            await proc.wait()
    report = out.decode(errors="replace")
    assert proc.returncode == 0, report[-4000:]
