"""A scripted local OpenAI API for provider tests: each request takes the next scripted reply.

The real openai SDK talks to it over a real socket on 127.0.0.1; the replies (SSE chat
completions, chunked PCM speech, errors, stalls) are written by the test modules.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from pipeline.providers._resilience import RetryPolicy, Timeouts

Reply = Callable[[web.Request], Awaitable[web.StreamResponse]]

FAST_RETRY = RetryPolicy(attempts=3, backoff_s=0.001, backoff_max_s=0.002)
SHORT = Timeouts(connect_s=1.0, first_byte_s=0.1, total_s=5.0)


@dataclass
class FakeOpenAI:
    url: str = ""
    """The base URL to give the SDK (ends in /v1)."""
    replies: deque[Reply] = field(default_factory=deque)
    """One per request, in order; a request with none left gets a 500 naming the problem."""
    bodies: list[dict[str, Any]] = field(default_factory=list)
    auth: list[str] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    """Never set during a test; set at teardown so a stalled handler returns."""
    hung_up: asyncio.Event = field(default_factory=asyncio.Event)
    """Set by replies that hold a connection open when the client closes it."""
    peers: list[tuple[str, int]] = field(default_factory=list)
    """The client address of every request, models listing included: one TCP connection each."""
    model_lists: int = 0

    def script(self, *replies: Reply) -> None:
        self.replies.extend(replies)


@asynccontextmanager
async def serve_openai(path: str) -> AsyncIterator[FakeOpenAI]:
    """Serve POST `path` (e.g. /v1/chat/completions) on 127.0.0.1 until the block ends."""
    srv = FakeOpenAI()

    def peer(request: web.Request) -> tuple[str, int]:
        assert request.transport is not None
        host, port = request.transport.get_extra_info("peername")[:2]
        return host, port

    async def models(request: web.Request) -> web.Response:
        srv.peers.append(peer(request))
        srv.model_lists += 1
        return web.json_response(
            {
                "object": "list",
                "data": [{"id": "gpt-4o-mini", "object": "model", "created": 0, "owned_by": "openai"}],
            }
        )

    async def handle(request: web.Request) -> web.StreamResponse:
        srv.peers.append(peer(request))
        srv.bodies.append(await request.json())
        srv.auth.append(request.headers.get("Authorization", ""))
        if not srv.replies:
            return error_json(500, "test server: no reply scripted for this request")
        return await srv.replies.popleft()(request)

    app = web.Application()
    app.router.add_post(path, handle)
    app.router.add_get("/v1/models", models)
    runner = web.AppRunner(app, handler_cancellation=True)  # a client hang-up cancels the handler
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    srv.url = f"http://127.0.0.1:{runner.addresses[0][1]}/v1"
    try:
        yield srv
    finally:
        srv.release.set()
        await runner.cleanup()


def error_json(status: int, message: str, type_: str = "invalid_request_error") -> web.Response:
    """An error as OpenAI returns it."""
    body = {"error": {"message": message, "type": type_, "param": None, "code": None}}
    return web.json_response(body, status=status)


def status(code: int, message: str) -> Reply:
    async def reply(request: web.Request) -> web.StreamResponse:
        return error_json(code, message)

    return reply


def stall(srv: FakeOpenAI) -> Reply:
    """Never answer (until teardown): the client's first-byte timeout must fire."""

    async def reply(request: web.Request) -> web.StreamResponse:
        await srv.release.wait()
        return web.Response()

    return reply
