"""A call's tools: HTTP tools against a real local server, Python tools, built-ins, canned results.

Every failure comes back as an error result naming the tool; run() itself never raises.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
from collections.abc import AsyncIterator, Iterator, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web
from pydantic import ValidationError
from structlog.testing import capture_logs

from pipeline import ToolCall, ToolOutcome
from workflows import CallState, ToolBox, ToolError, Workflow
from workflows._tool_processes import WORKERS

SLOTS = {"date": "2025-05-01", "slots": [{"time": "18:00"}, {"time": "20:30"}]}


@dataclass
class Server:
    url: str
    seen: list[dict[str, Any]] = field(default_factory=list)
    """One entry per request that reached a handler."""
    release: asyncio.Event = field(default_factory=asyncio.Event)
    """Never set during a test; set at teardown so the hanging handler returns."""


@pytest_asyncio.fixture
async def server() -> AsyncIterator[Server]:
    srv = Server(url="")

    async def record(request: web.Request) -> None:
        body = await request.text()
        srv.seen.append(
            {
                "method": request.method,
                "host": request.host,
                "path": request.path,
                "raw_path": request.raw_path,
                "match": dict(request.match_info),
                "x_name": request.headers.get("X-Name"),
                "form": parse_qsl(body, keep_blank_values=True)
                if request.content_type == "application/x-www-form-urlencoded"
                else None,
                "query": list(request.query.items()),
                "auth": request.headers.get("Authorization"),
                "body": body,
                "json": await request.json() if body and request.content_type == "application/json" else None,
            }
        )

    async def slots(request: web.Request) -> web.Response:
        await record(request)
        return web.json_response({**SLOTS, "date": request.match_info["date"]})

    async def echo(request: web.Request) -> web.Response:
        await record(request)
        return web.json_response({"echo": srv.seen[-1]})

    async def broken(request: web.Request) -> web.Response:
        await record(request)
        return web.Response(status=500, text="database   exploded\n" + "x" * 1000)

    async def slow(request: web.Request) -> web.Response:
        await record(request)
        await srv.release.wait()
        return web.json_response({"late": True})

    async def not_json(request: web.Request) -> web.Response:
        await record(request)
        return web.Response(text="<html>oops</html>", content_type="text/html")

    async def empty(request: web.Request) -> web.Response:
        await record(request)
        return web.Response(status=204)

    async def huge(request: web.Request) -> web.StreamResponse:
        # Chunked, so no Content-Length gives the size away: only reading it does.
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        await resp.prepare(request)
        await resp.write(b'{"rows": [')
        for i in range(25_000):
            await resp.write(b'"row-%06d",' % i)
        await resp.write(b'"end"]}')
        return resp

    app = web.Application()
    app.router.add_get("/slots/{date}", slots)
    app.router.add_route("*", "/echo", echo)
    app.router.add_route("*", "/files/{name}", echo)
    app.router.add_get("/broken", broken)
    app.router.add_get("/slow", slow)
    app.router.add_get("/not-json", not_json)
    app.router.add_delete("/empty", empty)
    app.router.add_get("/huge", huge)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    srv.url = f"http://127.0.0.1:{port}"
    try:
        yield srv
    finally:
        srv.release.set()
        await runner.cleanup()


API = "http://api.invalid"
"""Stands for the test server in urls until workflow_for() writes the server's own address there
(a template cannot fill a url's host)."""


def tool(path: str, **http: Any) -> dict[str, Any]:
    return {"description": f"Calls {path}.", "http": {"url": API + path, **http}}


def with_api(value: object, api: str) -> Any:
    if isinstance(value, str):
        return value.replace(API, api)
    if isinstance(value, dict):
        return {k: with_api(v, api) for k, v in value.items()}
    if isinstance(value, list):
        return [with_api(v, api) for v in value]
    return value


WORKFLOW_DATA: dict[str, Any] = {
    "version": 1,
    "slug": "tools-check",
    "start": "main",
    "variables": {"customer_id": {"type": "string", "required": True}, "name": {"type": "string"}},
    "vars": {
        "slot_time": {"type": "string"},
        "party_size": {"type": "integer", "default": 2},
        "confirmed": {"type": "boolean", "default": False},
    },
    "tools": {
        "find_slots": {
            "description": "Free tables on a date.",
            "parameters": {
                "type": "object",
                "properties": {
                    "date": {"type": "string", "pattern": r"^\d{4}-\d{2}-\d{2}$"},
                    "party_size": {"type": "integer", "minimum": 1},
                },
                "required": ["date"],
                "additionalProperties": False,
            },
            "http": {
                "url": API + "/slots/{{args.date}}?party={{args.party_size}}",
                "headers": {"Authorization": "Bearer {{user.customer_id}}"},
                "save": {"slot_time": "slots.0.time"},
            },
            "filler": "One moment, let me check for {{vars.party_size}}.",
        },
        "book": {
            "description": "Book a table.",
            "parameters": {
                "type": "object",
                "properties": {"party_size": {"type": "integer"}, "note": {"type": "string"}},
                "required": ["party_size"],
            },
            "http": {
                "method": "POST",
                "url": API + "/echo",
                "body": {
                    "customer": "{{user.customer_id}}",
                    "party_size": "{{ args.party_size }}",
                    "summary": "{{args.party_size}} people at {{vars.slot_time}}",
                    "note": "{{args.note}}",
                    "tags": ["phone", "{{vars.confirmed}}"],
                },
            },
        },
        "search": {
            "description": "Search.",
            "parameters": {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]},
            "http": tool("/echo?q={{args.q}}")["http"],
        },
        "raw_body": {
            "description": "Form body.",
            "http": {
                "method": "PUT",
                "url": API + "/echo",
                "headers": {"Content-Type": "application/x-www-form-urlencoded"},
                "body": "customer={{user.customer_id}}&name={{user.name}}&n=1",
            },
        },
        "text_body": {
            "description": "Plain text body.",
            "http": {
                "method": "POST",
                "url": API + "/echo",
                "headers": {"content-type": "text/plain; charset=utf-8"},
                "body": "Note from {{user.name}}",
            },
        },
        "files": {
            "description": "Everything a value can reach.",
            "http": {
                "method": "POST",
                "url": API + "/files/{{user.name}}?who={{user.name}}&n=1#{{user.name}}",
                "headers": {"X-Name": "{{user.name}}"},
                "body": {"name": "{{user.name}}", "greeting": "hi {{user.name}}"},
            },
        },
        "broken": tool("/broken"),
        "slow": tool("/slow", timeout_s=0.2),
        "not_json": tool("/not-json"),
        "empty": tool("/empty", method="DELETE"),
        "save_missing": tool("/slots/2025-05-01", save={"slot_time": "slots.5.time"}),
        "save_wrong_type": tool(
            "/slots/2025-05-01", save={"slot_time": "slots.0.time", "party_size": "date"}
        ),
        "lookup": {
            "description": "Look up an order.",
            "parameters": {
                "type": "object",
                "properties": {"order_id": {"type": "string"}, "verbose": {"type": "boolean"}},
                "required": ["order_id"],
            },
            "python": "tools_fixture:lookup_order",
        },
        "lookup_async": {
            "description": "Look up an order (async).",
            "parameters": {"type": "object", "properties": {"order_id": {"type": "string"}}},
            "python": "tools_fixture:lookup_order_async",
        },
        "explode": {"description": "Raises.", "python": "tools_fixture:explode"},
        "awkward": {"description": "Returns odd things.", "python": "tools_fixture:awkward"},
        "awkward_async": {"description": "Returns odd things.", "python": "tools_fixture:awkward_async"},
        "huge": tool("/huge"),
        "small_limit": tool("/slots/2025-05-01", max_response_bytes=20),
        "stuck": {
            "description": "Never returns.",
            "python": "tools_fixture:spin_forever",
            "timeout_s": 0.2,
        },
        "sleeping": {
            "description": "Never returns either.",
            "python": "tools_fixture:sleep_forever",
            "timeout_s": 0.2,
        },
        "die": {"description": "Exits its process.", "python": "tools_fixture:die"},
        "exit_tool": {"description": "Raises SystemExit.", "python": "tools_fixture:exit_tool"},
        "unpicklable": {"description": "Returns a lock.", "python": "tools_fixture:unpicklable"},
        "pid": {"description": "Its process id.", "python": "tools_fixture:pid"},
        "ctrl_c": {"description": "Gets a Ctrl-C.", "python": "tools_fixture:interrupted"},
        "exit_async": {"description": "Calls sys.exit.", "python": "tools_fixture:exit_async"},
        "parent_only": {"description": "Imports in the parent only.", "python": "tools_parent_only:run"},
        "stuck_async": {
            "description": "Never returns (async).",
            "python": "tools_fixture:wait_forever_async",
            "timeout_s": 0.2,
        },
        "missing_module": {"description": "No module.", "python": "no_such_module_here:run"},
        "not_callable": {"description": "Not a function.", "python": "tools_fixture:NOT_A_FUNCTION"},
    },
    "agents": {"main": {"instructions": "Help."}},
}


def workflow_for(api: str) -> Workflow:
    return Workflow.model_validate(with_api(WORKFLOW_DATA, api))


WORKFLOW = workflow_for("http://127.0.0.1:9")
ALL_TOOLS = (*WORKFLOW.tools, "end_call", "transfer_call", "set_variable")


@pytest.fixture(autouse=True)
def fixture_module_importable(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    yield


@pytest_asyncio.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


def state_for(workflow: Workflow = WORKFLOW, **user: object) -> CallState:
    return CallState.bind(workflow, {"customer_id": "c-42", **user})


@pytest.fixture
def workflow(server: Server) -> Workflow:
    return workflow_for(server.url)


@pytest.fixture
def state(workflow: Workflow) -> CallState:
    return state_for(workflow)


@pytest.fixture
def box(workflow: Workflow, state: CallState, session: aiohttp.ClientSession) -> ToolBox:
    return ToolBox(workflow, ALL_TOOLS, state, http=session)


async def run(box: ToolBox, name: str, /, **arguments: Any) -> ToolOutcome:
    return await box.run(ToolCall(id=f"call-{name}", name=name, arguments=arguments))


def error_of(outcome: ToolOutcome) -> str:
    assert outcome.is_error, outcome
    assert not outcome.end_call
    assert set(outcome.result) == {"error"}
    message = outcome.result["error"]
    assert isinstance(message, str)
    return message


# -- HTTP tools ---------------------------------------------------------------------------------


async def test_http_success_saves_into_vars_and_logs(box: ToolBox, state: CallState, server: Server) -> None:
    with capture_logs() as logs:
        outcome = await run(box, "find_slots", date="2025-05-01", party_size=4)
    assert outcome == ToolOutcome({**SLOTS, "date": "2025-05-01"})
    assert state.vars["slot_time"] == "18:00"
    (seen,) = server.seen
    assert seen["path"] == "/slots/2025-05-01"
    assert seen["query"] == [("party", "4")]
    assert seen["auth"] == "Bearer c-42"
    (event,) = [e for e in logs if e["event"] == "tool_called"]
    assert event["tool"] == "find_slots" and event["log_level"] == "info"
    assert isinstance(event["duration_ms"], float) and event["duration_ms"] >= 0


async def test_omitted_optional_arguments_render_empty(box: ToolBox, server: Server) -> None:
    assert not (await run(box, "find_slots", date="2025-05-02")).is_error
    assert server.seen[0]["query"] == [("party", "")]


async def test_body_templates_keep_a_whole_placeholder_typed(
    box: ToolBox, state: CallState, server: Server
) -> None:
    state.set("slot_time", "18:00")
    outcome = await run(box, "book", party_size=4)
    assert not outcome.is_error
    (seen,) = server.seen
    assert seen["method"] == "POST"
    assert seen["json"] == {
        "customer": "c-42",
        "party_size": 4,
        "summary": "4 people at 18:00",
        "note": None,
        "tags": ["phone", False],
    }
    assert outcome.result["echo"]["json"] == seen["json"]


async def test_a_form_body_form_encodes_each_value(
    workflow: Workflow, session: aiohttp.ClientSession, server: Server
) -> None:
    box = ToolBox(workflow, ["raw_body"], state_for(workflow, name="Ann & co=1 +x"), http=session)
    assert not (await run(box, "raw_body")).is_error
    (seen,) = server.seen
    assert seen["method"] == "PUT"
    assert seen["form"] == [("customer", "c-42"), ("name", "Ann & co=1 +x"), ("n", "1")]


async def test_a_plain_text_body_takes_values_as_they_are(
    workflow: Workflow, session: aiohttp.ClientSession, server: Server
) -> None:
    box = ToolBox(workflow, ["text_body"], state_for(workflow, name='Ann", "admin": true'), http=session)
    assert not (await run(box, "text_body")).is_error
    assert server.seen[0]["body"] == 'Note from Ann", "admin": true'


HOSTILE = ["@127.0.0.2:1/x", "../../admin/delete?x=1&admin=true#frag", "..", "%2e%2E/a b", "é/ü"]


@pytest.mark.parametrize("name", HOSTILE)
async def test_hostile_user_data_stays_data_on_the_intended_host_and_path(
    name: str, workflow: Workflow, session: aiohttp.ClientSession, server: Server
) -> None:
    box = ToolBox(workflow, ["files"], state_for(workflow, name=name), http=session)
    assert not (await run(box, "files")).is_error
    (seen,) = server.seen
    assert seen["host"] == server.url.removeprefix("http://")
    assert seen["match"] == {"name": name}  # one path segment: the route still matched
    path = seen["raw_path"].partition("?")[0]
    assert path.startswith("/files/") and path.count("/") == 2
    assert "." not in path  # no dot segment for a client or proxy to resolve
    assert seen["query"] == [("who", name), ("n", "1")]
    assert seen["x_name"] == name
    assert seen["json"] == {"name": name, "greeting": f"hi {name}"}


@pytest.mark.parametrize("name", ["c-42\r\nX-Admin: 1", "a\nb", "a\rb", "a\x00b"])
async def test_a_header_value_with_a_line_break_is_not_sent(
    name: str, workflow: Workflow, session: aiohttp.ClientSession, server: Server
) -> None:
    box = ToolBox(workflow, ["files"], state_for(workflow, name=name), http=session)
    assert error_of(await run(box, "files")) == (
        "tool files: header 'X-Name' would contain a line break from a template value; not sent"
    )
    assert server.seen == []


async def test_a_text_body_of_another_type_takes_no_templates(session: aiohttp.ClientSession) -> None:
    # validation refuses it (test_validate.py); a workflow built in code gets an error result
    data = {
        **WORKFLOW_DATA,
        "tools": {
            "json_text": {
                "description": "J.",
                "http": {"url": "http://127.0.0.1:9/x", "body": '{"n": "{{user.name}}"}'},
            }
        },
    }
    workflow = Workflow.model_validate(data)
    box = ToolBox(workflow, ["json_text"], state_for(workflow, name='", "admin": true, "x": "'), http=session)
    assert error_of(await run(box, "json_text")).startswith(
        "tool json_text: a text body takes templates only with a Content-Type header of "
        "application/x-www-form-urlencoded"
    )


@pytest.mark.parametrize(
    "url",
    [
        "{{user.name}}/x",
        "{{user.name}}://example.com/x",
        "http://{{user.name}}/x",
        "http://example.com{{user.name}}/x",
        "http://example.com:{{user.name}}/x",
        "http://{{user.name}}@example.com/x",
        "https://api.{{user.name}}.example.com?x=1",
    ],
)
def test_templates_cannot_fill_the_scheme_user_host_or_port(url: str) -> None:
    data = {**WORKFLOW_DATA, "tools": {"t": {"description": "T.", "http": {"url": url}}}}
    with pytest.raises(ValidationError, match="a template cannot fill the scheme, user, host or port"):
        Workflow.model_validate(data)


async def test_arguments_in_a_url_are_percent_encoded(box: ToolBox, server: Server) -> None:
    assert not (await run(box, "search", q="a&admin=1 b/c")).is_error
    assert server.seen[0]["query"] == [("q", "a&admin=1 b/c")]


async def test_http_error_status_is_an_error_result(box: ToolBox, server: Server) -> None:
    with capture_logs() as logs:
        message = error_of(await run(box, "broken"))
    assert message.startswith("tool broken: HTTP 500: database exploded xxx")
    assert len(message) < 300
    (event,) = [e for e in logs if e["event"] == "tool_failed"]
    assert event["tool"] == "broken" and event["error"] == message and event["log_level"] == "warning"
    assert not [e for e in logs if e["event"] == "tool_called"]


async def test_slow_server_times_out(box: ToolBox, server: Server) -> None:
    assert error_of(await run(box, "slow")) == "tool slow: no response within 0.2 s"
    assert len(server.seen) == 1  # the request did reach the server


async def test_invalid_json_is_an_error_result(box: ToolBox) -> None:
    assert error_of(await run(box, "not_json")) == "tool not_json: response is not JSON: <html>oops</html>"


async def test_an_empty_success_response_is_ok(box: ToolBox, server: Server) -> None:
    assert await run(box, "empty") == ToolOutcome({"ok": True, "status": 204})
    assert server.seen[0]["method"] == "DELETE"


async def test_a_save_path_missing_from_the_response(box: ToolBox, state: CallState) -> None:
    message = error_of(await run(box, "save_missing"))
    assert message == "tool save_missing: response has no 'slots.5.time' (to save as vars.slot_time)"
    assert state.vars["slot_time"] is None


async def test_a_saved_value_of_the_wrong_type_saves_nothing(box: ToolBox, state: CallState) -> None:
    message = error_of(await run(box, "save_wrong_type"))
    assert message == (
        "tool save_wrong_type: cannot save the response: "
        "vars.party_size: expected an integer, got '2025-05-01'"
    )
    assert state.vars["slot_time"] is None and state.vars["party_size"] == 2


async def test_arguments_breaking_the_schema_never_reach_the_server(box: ToolBox, server: Server) -> None:
    message = error_of(await run(box, "find_slots", date="tomorrow", party_size="four"))
    assert message == (
        "tool find_slots: invalid arguments: arguments.date: 'tomorrow' does not match "
        "'^\\\\d{4}-\\\\d{2}-\\\\d{2}$'; arguments.party_size: 'four' is not of type 'integer'"
    )
    message = error_of(await run(box, "find_slots"))
    assert message == "tool find_slots: invalid arguments: arguments: 'date' is a required property"
    message = error_of(await run(box, "find_slots", date="2025-05-01", time="late"))
    assert "arguments: Additional properties are not allowed ('time' was unexpected)" in message
    assert server.seen == []


async def test_connection_refused_is_an_error_result(session: aiohttp.ClientSession) -> None:
    with socket.socket() as s:  # a port nobody listens on once closed
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    down = workflow_for(f"http://127.0.0.1:{port}")
    box = ToolBox(down, ["broken"], state_for(down), http=session)
    message = error_of(await run(box, "broken"))
    assert message.startswith("tool broken: request failed: ClientConnectorError")


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("/relative/path", "must be an absolute http:// or https:// URL"),
        ("ftp://example.com/x", "must be an http:// or https:// URL, not ftp://"),
        ("http:///x", "has no host"),
        ("http://example.com:99999/x", "is not a valid URL"),
    ],
)
def test_a_url_must_name_an_http_origin(url: str, message: str) -> None:
    data = {**WORKFLOW_DATA, "tools": {"t": {"description": "T.", "http": {"url": url}}}}
    with pytest.raises(ValidationError, match=message):
        Workflow.model_validate(data)


# -- Python tools -------------------------------------------------------------------------------


async def test_a_sync_python_tool_runs_in_another_process(box: ToolBox) -> None:
    outcome = await run(box, "lookup", order_id="A1", verbose=True)
    assert not outcome.is_error
    assert outcome.result["order_id"] == "A1" and outcome.result["verbose"] is True
    assert outcome.result["pid"] != os.getpid()


async def test_an_async_python_tool_is_awaited(box: ToolBox) -> None:
    assert await run(box, "lookup_async", order_id="B2") == ToolOutcome(
        {"order_id": "B2", "status": "delivered"}
    )


async def test_a_python_tool_that_raises_is_an_error_result(box: ToolBox) -> None:
    with capture_logs() as logs:
        message = error_of(await run(box, "explode"))
        assert (
            message == "tool explode: TypeError: explode() missing 1 required positional argument: 'order_id'"
        )
        message = error_of(await run(box, "explode", order_id="C3"))
        assert message == "tool explode: ValueError: order C3 is corrupt"
    failed = [e for e in logs if e["event"] == "tool_failed"]
    assert "ValueError: order C3 is corrupt" in failed[1]["tool_traceback"]  # from the worker


async def test_python_targets_that_do_not_resolve(box: ToolBox) -> None:
    message = error_of(await run(box, "missing_module"))
    assert message.startswith(
        "tool missing_module: cannot import 'no_such_module_here:run': ModuleNotFoundError"
    )
    message = error_of(await run(box, "not_callable"))
    assert message == (
        "tool not_callable: python tool target 'tools_fixture:NOT_A_FUNCTION': "
        "module 'tools_fixture' has no function 'NOT_A_FUNCTION'"
    )


# -- built-ins ----------------------------------------------------------------------------------


async def test_end_call(box: ToolBox) -> None:
    assert await run(box, "end_call") == ToolOutcome({"ok": True}, end_call=True)


async def test_set_variable_is_type_checked(box: ToolBox, state: CallState) -> None:
    outcome = await run(box, "set_variable", name="party_size", value=6)
    assert outcome == ToolOutcome({"ok": True, "name": "party_size", "value": 6})
    assert state.vars["party_size"] == 6
    message = error_of(await run(box, "set_variable", name="party_size", value="six"))
    assert message == "tool set_variable: vars.party_size: expected an integer, got 'six'"
    message = error_of(await run(box, "set_variable", name="colour", value="red"))
    assert message.startswith("tool set_variable: invalid arguments: arguments.name: 'colour' is not one of")
    assert state.vars["party_size"] == 6


async def test_transfer_call_without_telephony(box: ToolBox) -> None:
    outcome = await run(box, "transfer_call", phone_number="+14155550123")
    assert outcome == ToolOutcome(
        {"error": "transfer_call needs a telephony transport (LiveKit SIP); not available in this call"},
        is_error=True,
    )


async def test_transfer_call_with_a_transport_ends_the_call(
    state: CallState, session: aiohttp.ClientSession
) -> None:
    numbers: list[str] = []

    async def transfer(number: str) -> None:
        numbers.append(number)

    box = ToolBox(WORKFLOW, ["transfer_call"], state, http=session, transfer=transfer)
    assert error_of(await run(box, "transfer_call", phone_number="555-0123")).startswith(
        "tool transfer_call: invalid arguments: arguments.phone_number: '555-0123' does not match"
    )
    assert numbers == []
    outcome = await run(box, "transfer_call", phone_number="+14155550123")
    assert outcome == ToolOutcome({"ok": True, "transferred_to": "+14155550123"}, end_call=True)
    assert numbers == ["+14155550123"]


async def test_a_failing_transfer_is_an_error_result(
    state: CallState, session: aiohttp.ClientSession
) -> None:
    async def transfer(number: str) -> None:
        raise ConnectionError(f"SIP trunk refused {number}")

    box = ToolBox(WORKFLOW, ["transfer_call"], state, http=session, transfer=transfer)
    message = error_of(await run(box, "transfer_call", phone_number="+14155550123"))
    assert message == "tool transfer_call: ConnectionError: SIP trunk refused +14155550123"


async def test_a_tool_the_agent_does_not_have(state: CallState, session: aiohttp.ClientSession) -> None:
    box = ToolBox(WORKFLOW, ["end_call", "lookup"], state, http=session)
    message = error_of(await run(box, "find_slots", date="2025-05-01"))
    assert message == "tool 'find_slots' is not available to this agent (its tools: end_call, lookup)"


# -- canned results -----------------------------------------------------------------------------


async def test_canned_results_replace_running_the_tool(
    state: CallState, session: aiohttp.ClientSession, server: Server
) -> None:
    canned = {"find_slots": {"slots": [{"time": "21:00"}]}, "explode": {"ok": True}, "end_call": {"no": 1}}
    box = ToolBox(WORKFLOW, ALL_TOOLS, state, http=session, canned=canned)
    with capture_logs() as logs:
        assert await run(box, "find_slots", date="2025-05-01") == ToolOutcome({"slots": [{"time": "21:00"}]})
    assert server.seen == []
    assert state.vars["slot_time"] == "21:00"  # save applies to the stand-in response
    assert [e.get("canned") for e in logs if e["event"] == "tool_called"] == [True]
    assert await run(box, "explode") == ToolOutcome({"ok": True})
    # arguments are still checked, and built-ins still run
    assert error_of(await run(box, "find_slots", date="soon")).startswith(
        "tool find_slots: invalid arguments"
    )
    assert await run(box, "end_call") == ToolOutcome({"ok": True}, end_call=True)


# -- specs and fillers --------------------------------------------------------------------------


async def test_specs_offer_defined_and_builtin_tools(box: ToolBox) -> None:
    specs = {s.name: s for s in box.specs()}
    assert list(specs) == list(ALL_TOOLS)
    find = specs["find_slots"]
    assert find.description == "Free tables on a date."
    assert find.parameters == WORKFLOW.tools["find_slots"].parameters
    assert specs["end_call"].parameters == {"type": "object", "properties": {}, "additionalProperties": False}
    phone = specs["transfer_call"].parameters["properties"]["phone_number"]
    assert phone["type"] == "string" and phone["pattern"] == r"^\+[1-9][0-9]{1,14}$"
    assert specs["transfer_call"].parameters["required"] == ["phone_number"]
    setter = specs["set_variable"].parameters
    assert setter["properties"]["name"]["enum"] == ["slot_time", "party_size", "confirmed"]
    assert setter["required"] == ["name", "value"]
    assert "party_size (integer)" in specs["set_variable"].description


def test_specs_follow_the_agents_list() -> None:
    state = state_for()
    box = ToolBox(WORKFLOW, ["set_variable", "lookup", "set_variable"], state, http=None)  # type: ignore[arg-type]
    assert box.names == ("set_variable", "lookup")


def test_an_unknown_tool_name_is_refused_at_setup() -> None:
    state = state_for()
    with pytest.raises(
        ToolError, match=r"tool 'teleport' is neither defined in workflow 'tools-check' nor built in"
    ):
        ToolBox(WORKFLOW, ["teleport"], state, http=None)  # type: ignore[arg-type]


async def test_filler_is_rendered_with_the_call_data(box: ToolBox, state: CallState) -> None:
    assert box.filler_for("find_slots") == "One moment, let me check for 2."
    state.set("party_size", 5)
    assert box.filler_for("find_slots") == "One moment, let me check for 5."
    assert box.filler_for("lookup") is None
    assert box.filler_for("end_call") is None
    assert box.filler_for("nothing") is None


async def test_a_response_over_the_size_limit_is_an_error_result(box: ToolBox) -> None:
    # 300 KB streamed without a Content-Length: read up to the limit, then refused.
    assert error_of(await run(box, "huge")) == "tool huge: response is over the 262144-byte limit"
    # A Content-Length over the limit is refused before reading the body.
    assert error_of(await run(box, "small_limit")) == (
        "tool small_limit: response of 71 bytes is over the 20-byte limit"
    )


@pytest.mark.parametrize("tool", ["stuck", "sleeping"])
async def test_a_sync_tool_that_never_returns_is_stopped_and_the_pool_keeps_serving(
    box: ToolBox, tool: str, captured_logs: list[MutableMapping[str, Any]]
) -> None:
    assert error_of(await run(box, tool, order_id="A1")) == f"tool {tool}: no result within 0.2 s"
    (event,) = [e for e in captured_logs if e["event"] == "tool_timed_out"]
    assert event["tool"] == tool and event["runs_in"] == "process"
    # its worker was killed and replaced: every worker serves again, all at once
    outcomes = await asyncio.gather(*(run(box, "pid") for _ in range(WORKERS + 1)))
    assert all(not o.is_error for o in outcomes), outcomes
    assert all(psutil_alive(o.result) for o in outcomes)


def psutil_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_an_async_tool_that_never_returns_is_cancelled(
    box: ToolBox, captured_logs: list[MutableMapping[str, Any]]
) -> None:
    assert (
        error_of(await run(box, "stuck_async", order_id="A1")) == "tool stuck_async: no result within 0.2 s"
    )
    (event,) = [e for e in captured_logs if e["event"] == "tool_timed_out"]
    assert event["runs_in"] == "event_loop"


async def test_an_async_tool_calling_sys_exit_is_an_error_result_not_the_end_of_the_process(
    box: ToolBox,
) -> None:
    assert error_of(await run(box, "exit_async", order_id="A1")) == "tool exit_async: SystemExit: no more"


async def test_a_ctrl_c_in_the_terminal_does_not_kill_a_running_tool(box: ToolBox) -> None:
    # The terminal signals the whole process group; the caller, not the tool, decides what it means.
    assert await run(box, "ctrl_c") == ToolOutcome("still running")


async def test_what_a_worker_cannot_do_is_an_error_result(box: ToolBox) -> None:
    assert error_of(await run(box, "die", order_id="A1")) == "tool die: its process died (exit code 3)"
    assert error_of(await run(box, "exit_tool", order_id="A1")) == "tool exit_tool: SystemExit: no more"
    assert error_of(await run(box, "parent_only")) == (
        "tool parent_only: cannot import 'tools_parent_only:run': ImportError: only importable in the parent"
    )
    # a lock and a generator cannot cross to this process: their repr does
    result = (await run(box, "unpicklable", order_id="A1")).result
    assert result["lock"].startswith("<unlocked _thread.lock object")
    assert result["gen"].startswith("<generator object")
    assert not (await run(box, "lookup", order_id="A2")).is_error


def test_an_http_tool_takes_its_timeout_from_http() -> None:
    from workflows import validate_text

    problems = validate_text(
        """
version: 1
slug: t
start: a
tools:
  t:
    description: T.
    timeout_s: 3
    http: {url: "http://x"}
agents:
  a: {instructions: A.}
"""
    )
    assert any("an HTTP tool's timeout is http.timeout_s" in str(p) for p in problems), problems


# -- results: JSON data whatever a tool returns -------------------------------------------------

AWKWARD = {
    "datetime": "2025-05-01T19:30:00+00:00",
    "set": ["a", "b", "c"],
    "bytes": {"$bytes_base64": "AP9oaQ=="},
    "dataclass": {"id": "B1", "at": "2025-05-01T19:30:00", "tags": ["window"]},
    "floats": [None, None, None, 1.5],
    "cycle": {"name": "loop", "self": "<cycle>"},
    "object": "<Opaque thing>",
    "keys": {"1": "one", "null": "none", "(1, 2)": "pair"},
}


@pytest.mark.parametrize("tool", ["awkward", "awkward_async"])
@pytest.mark.parametrize(("kind", "expected"), list(AWKWARD.items()))
async def test_a_python_tools_result_becomes_json_data(
    box: ToolBox, tool: str, kind: str, expected: object
) -> None:
    outcome = await run(box, tool, kind=kind)
    assert not outcome.is_error
    assert outcome.result == expected
    json.dumps(outcome.result, allow_nan=False)  # what the transcript and the report write


async def test_a_huge_result_is_cut_to_the_limit_and_says_so(
    box: ToolBox, captured_logs: list[MutableMapping[str, Any]]
) -> None:
    outcome = await run(box, "awkward", kind="huge")
    assert not outcome.is_error
    assert "over the 262144-byte limit: this is its start" in outcome.result["truncated"]
    assert outcome.result["excerpt"].startswith('"xxxx')
    assert len(json.dumps(outcome.result)) <= 262144
    (event,) = [e for e in captured_logs if e["event"] == "tool_result_truncated"]
    assert event["tool"] == "awkward" and event["limit_bytes"] == 262144


async def test_canned_results_and_rule_arguments_from_yaml_are_json_data(
    session: aiohttp.ClientSession,
) -> None:
    from workflows import load_workflow_text

    workflow = load_workflow_text(
        """
version: 1
slug: dates
start: a
tools:
  book: {description: B., http: {url: "http://127.0.0.1:9/book", method: POST, body: {on: 2025-05-01}}}
agents:
  a:
    instructions: A.
    tools: [book]
    rules:
      - {keywords: [book], tool: {name: book, arguments: {on: 2025-05-01, seats: !!set {a, b}}}}
tests:
  - name: t
    tool_results: {book: {confirmed: 2025-05-01T19:30:00}}
    steps: [{user: book, expect: {tool_calls: [{name: book, arguments: {on: "2025-05-01"}}]}}]
"""
    )
    assert workflow.tools["book"].http is not None
    assert workflow.tools["book"].http.body == {"on": "2025-05-01"}
    assert workflow.agents["a"].rules[0].tool is not None
    assert workflow.agents["a"].rules[0].tool.arguments == {"on": "2025-05-01", "seats": ["a", "b"]}
    state = CallState.bind(workflow, {})
    box = ToolBox(workflow, ["book"], state, http=session, canned=workflow.tests[0].tool_results)
    assert (await run(box, "book")).result == {"confirmed": "2025-05-01T19:30:00"}
