"""A fake of the usage-tracking API (Paygent's voice tracking REST API) on 127.0.0.1.

It is a real aiohttp server that behaves like the documented API, strictly:
- `paygent-api-key` must be the configured key (401 otherwise);
- each endpoint's fields must be present with the right JSON type (422 otherwise);
- a session needs its customer, and usage and the indicator need their session (404 otherwise),
  so an event sent out of order fails the way it would in production;
- like Stripe, a request whose `Idempotency-Key` was already processed gets the first answer
  again (`Idempotent-Replayed: true`) and changes nothing; the same key with a different body is
  a 400.

Every request is recorded (`requests`); what the API did is in `applied`. Faults are scripted:
`down()`/`up()` answer everything with a 5xx, `stop()`/`start()` refuse connections on the same
port, `fail()` answers chosen requests with a status (429 with Retry-After, the Nth request...),
`hang()` holds an answer back after the request is applied (a response lost in a crash), and
`garble()` answers 200 with a body that is not JSON. Tests wait with `wait_for()`, never sleep.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from aiohttp import web
from multidict import CIMultiDict

FieldType = Literal["string", "number", "integer"]

# Every field of the documented examples is required; extra fields are ignored.
ENDPOINTS: dict[str, tuple[str, dict[str, FieldType]]] = {
    "/api/v1/customers/create-or-get": ("customer", {"name": "string", "externalId": "string"}),
    "/api/v1/voice/session": (
        "session",
        {"sessionId": "string", "agentId": "string", "customerId": "string"},
    ),
    "/api/v1/voice/stt": (
        "stt",
        {
            "sessionId": "string",
            "audioMinutes": "number",
            "provider": "string",
            "model": "string",
            "plan": "string",
        },
    ),
    "/api/v1/voice/llm": (
        "llm",
        {
            "sessionId": "string",
            "provider": "string",
            "model": "string",
            "plan": "string",
            "promptTokens": "integer",
            "completionTokens": "integer",
            "cachedTokens": "integer",
        },
    ),
    "/api/v1/voice/tts": (
        "tts",
        {
            "sessionId": "string",
            "provider": "string",
            "model": "string",
            "plan": "string",
            "characters": "integer",
        },
    ),
    "/api/v1/voice/indicator": (
        "indicator",
        {"sessionId": "string", "indicator": "string", "totalDuration": "number"},
    ),
}
PATHS = {step: path for path, (step, _) in ENDPOINTS.items()}


@dataclass(eq=False)
class Request:
    """One request as the fake received it, and the status it answered (None: no answer yet)."""

    n: int
    """1-based, in arrival order."""
    path: str
    step: str | None
    headers: CIMultiDict[str]
    body: bytes
    json: Any
    status: int | None = None
    replayed: bool = False

    @property
    def idempotency_key(self) -> str | None:
        return self.headers.get("Idempotency-Key")


@dataclass(frozen=True, slots=True)
class Applied:
    """An effect of the API: a customer created, a session started, usage or an indicator recorded."""

    step: str
    key: str | None
    json: dict[str, Any]
    request: int


@dataclass(eq=False)
class Hang:
    """An answer held back until `release()`; `received` is set when the request has arrived
    (and been applied)."""

    step: str | None
    received: asyncio.Event = field(default_factory=asyncio.Event)
    request: Request | None = None
    _released: asyncio.Event = field(default_factory=asyncio.Event)

    def release(self) -> None:
        self._released.set()


@dataclass(eq=False)
class _Fault:
    status: int
    step: str | None
    nth: int | None
    times: int
    headers: dict[str, str]
    body: bytes

    def matches(self, request: Request) -> bool:
        if self.times <= 0:
            return False
        if self.nth is not None:
            return request.n == self.nth
        return self.step is None or self.step == request.step


@dataclass(eq=False)
class _Garble:
    step: str | None
    times: int
    body: bytes


class FakeUsageAPI:
    """`async with FakeUsageAPI(api_key="k") as api:` serves on `api.url` until the block ends."""

    def __init__(self, *, api_key: str = "test-key") -> None:
        self.api_key = api_key
        self.requests: list[Request] = []
        self.applied: list[Applied] = []
        self.customers: dict[str, dict[str, Any]] = {}
        self.sessions: dict[str, dict[str, Any]] = {}
        self._results: dict[str, tuple[int, bytes, bytes]] = {}
        """Idempotency-Key -> (status, body, the request body it answered)."""
        self._faults: list[_Fault] = []
        self._garbles: list[_Garble] = []
        self._hangs: list[Hang] = []
        self._hangs_received: list[Hang] = []
        self._down: tuple[int, dict[str, str]] | None = None
        self._changed: asyncio.Condition | None = None
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- lifecycle -------------------------------------------------------------------------

    async def __aenter__(self) -> FakeUsageAPI:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        """Serve, on the same port as before if this fake has run already."""
        self._changed = self._changed or asyncio.Condition()
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", self.port, reuse_address=True)
        await site.start()
        self._runner = runner
        self.port = runner.addresses[0][1]

    async def stop(self) -> None:
        """Stop serving: connections are refused until `start()`. Held answers are let go
        first (to a client that is still there, or to none after a crash)."""
        for hang in self._hangs_received:
            hang.release()
        if self._runner is None:
            return
        runner, self._runner = self._runner, None
        await runner.cleanup()

    # -- scripting -------------------------------------------------------------------------

    def down(self, status: int = 503, *, retry_after: float | None = None) -> None:
        """Answer every request with `status` (not applied) until `up()`."""
        headers = {"Retry-After": _seconds(retry_after)} if retry_after is not None else {}
        self._down = (status, headers)

    def up(self) -> None:
        self._down = None

    def fail(
        self,
        status: int,
        *,
        step: str | None = None,
        nth: int | None = None,
        times: int = 1,
        retry_after: float | str | None = None,
        body: bytes | str = b'{"error": "scripted failure"}',
    ) -> None:
        """Answer `times` requests (to `step`, or the `nth` request overall) with `status`;
        they are not applied."""
        headers = {"Content-Type": "application/json"}
        if retry_after is not None:
            headers["Retry-After"] = retry_after if isinstance(retry_after, str) else _seconds(retry_after)
        self._faults.append(
            _Fault(status, step, nth, times, headers, body.encode() if isinstance(body, str) else body)
        )

    def garble(
        self, step: str | None = None, *, times: int = 1, body: bytes = b"<html>ok?</html\x00"
    ) -> None:
        """Apply `times` requests (to `step`) normally but answer 200 with `body`, not JSON."""
        self._garbles.append(_Garble(step, times, body))

    def hang(self, step: str | None = None) -> Hang:
        """Hold back the answer to the next request (to `step`) after applying it."""
        hang = Hang(step)
        self._hangs.append(hang)
        return hang

    # -- observing -------------------------------------------------------------------------

    async def wait_for(self, predicate: Callable[[FakeUsageAPI], bool]) -> None:
        """Wait until `predicate(self)` holds; it is checked after every request and effect.
        Bound it with `asyncio.timeout()`."""
        assert self._changed is not None, "start the fake first"
        async with self._changed:
            await self._changed.wait_for(lambda: predicate(self))

    def applied_steps(self, session_id: str | None = None) -> list[str]:
        """The steps applied, in order; for one session (its customer included) if given."""
        if session_id is None:
            return [a.step for a in self.applied]
        customer = self.sessions.get(session_id, {}).get("customerId")
        return [
            a.step
            for a in self.applied
            if a.json.get("sessionId") == session_id
            or (a.step == "customer" and customer is not None and a.json.get("externalId") == customer)
        ]

    def requests_to(self, step: str) -> list[Request]:
        return [r for r in self.requests if r.step == step]

    # -- the API ---------------------------------------------------------------------------

    async def _handle(self, http: web.Request) -> web.Response:
        body = await http.read()
        try:
            parsed: Any = json.loads(body) if body else None
        except ValueError:
            parsed = None
        step = ENDPOINTS.get(http.path, (None, {}))[0]
        request = Request(len(self.requests) + 1, http.path, step, CIMultiDict(http.headers), body, parsed)
        self.requests.append(request)
        try:
            response = await self._answer(http, request)
        finally:
            await self._notify()
        request.status = response.status
        await self._notify()
        return response

    async def _answer(self, http: web.Request, request: Request) -> web.Response:
        if self._down is not None:
            status, headers = self._down
            return _error(status, "service unavailable", headers)
        for fault in self._faults:
            if fault.matches(request):
                fault.times -= 1
                return web.Response(status=fault.status, body=fault.body, headers=fault.headers)
        if http.headers.get("paygent-api-key") != self.api_key:
            return _error(401, "invalid or missing paygent-api-key")
        if request.step is None:
            return _error(404, f"no such endpoint: {http.method} {http.path}")
        if http.method != "POST":
            return _error(405, f"{http.method} not allowed")
        if http.content_type != "application/json":
            return _error(415, "Content-Type must be application/json")
        if not isinstance(request.json, dict):
            return _error(400, "the body must be a JSON object")
        problem = _invalid(request.json, ENDPOINTS[http.path][1])
        if problem:
            return _error(422, problem)
        key = request.idempotency_key
        if key is not None and key in self._results:
            status, answer, first_body = self._results[key]
            if json.loads(first_body) != request.json:
                return _error(400, f"Idempotency-Key {key} was used with a different body")
            request.replayed = True
            return web.Response(
                status=status,
                body=answer,
                content_type="application/json",
                headers={"Idempotent-Replayed": "true"},
            )
        status, answer = self._apply(request.step, request.json)
        if 200 <= status < 300:
            self.applied.append(Applied(request.step, key, request.json, request.n))
            if key is not None:
                self._results[key] = (status, answer, request.body)
        await self._notify()
        hang = next((h for h in self._hangs if h.step in (None, request.step)), None)
        if hang is not None and 200 <= status < 300:
            self._hangs.remove(hang)
            self._hangs_received.append(hang)
            hang.request = request
            hang.received.set()
            await hang._released.wait()
        garble = next((g for g in self._garbles if g.times > 0 and g.step in (None, request.step)), None)
        if garble is not None and 200 <= status < 300:
            garble.times -= 1
            return web.Response(status=200, body=garble.body, content_type="text/html")
        return web.Response(status=status, body=answer, content_type="application/json")

    def _apply(self, step: str, data: dict[str, Any]) -> tuple[int, bytes]:
        if step == "customer":
            created = data["externalId"] not in self.customers
            customer = self.customers.setdefault(data["externalId"], dict(data))
            return (201 if created else 200), _json({"success": True, "data": customer})
        if step == "session":
            if data["customerId"] not in self.customers:
                return 404, _json({"error": f"customer {data['customerId']} not found"})
            if data["sessionId"] in self.sessions:
                return 409, _json({"error": f"session {data['sessionId']} already exists"})
            self.sessions[data["sessionId"]] = {**data, "usage": [], "indicator": None}
            return 201, _json({"success": True, "data": {"sessionId": data["sessionId"]}})
        session = self.sessions.get(data["sessionId"])
        if session is None:
            return 404, _json({"error": f"session {data['sessionId']} not found"})
        if step == "indicator":
            session["indicator"] = data
        else:
            session["usage"].append({"step": step, **data})
        return 200, _json({"success": True})

    async def _notify(self) -> None:
        assert self._changed is not None
        async with self._changed:
            self._changed.notify_all()


def _invalid(data: Mapping[str, Any], fields: Mapping[str, FieldType]) -> str | None:
    for name, kind in fields.items():
        if name not in data:
            return f"{name} is required"
        value = data[name]
        if kind == "string":
            ok = isinstance(value, str) and value != ""
        elif kind == "integer":
            ok = isinstance(value, int) and not isinstance(value, bool) and value >= 0
        else:
            ok = isinstance(value, int | float) and not isinstance(value, bool) and value >= 0
        if not ok:
            return f"{name} must be a {'non-empty ' if kind == 'string' else 'non-negative '}{kind}"
    return None


def _json(data: object) -> bytes:
    return json.dumps(data).encode()


def _error(status: int, message: str, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status, body=_json({"error": message}), content_type="application/json", headers=headers
    )


def _seconds(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)
