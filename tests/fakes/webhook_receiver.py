"""A tenant's webhook receiver on 127.0.0.1: checks each request's signature with the snippet
docs/webhooks.md gives receivers (run as a receiver would paste it), refuses what does not verify
(401), and keeps what came, in order."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

ROOT = Path(__file__).resolve().parents[2]

Verify = Callable[[str, dict[str, str], bytes], bool]


def documented_verify() -> Verify:
    """The verification snippet of docs/webhooks.md, as a receiver would paste it."""
    doc = (ROOT / "docs" / "webhooks.md").read_text()
    match = re.search(r"<!-- verify-webhook:.*?-->\n```python\n(.*?)```", doc, re.S)
    assert match is not None, "docs/webhooks.md lost its verification snippet"
    scope: dict[str, Any] = {}
    exec(match.group(1), scope)
    verify: Verify = scope["verify_webhook"]
    return verify


@dataclass(frozen=True)
class Request:
    headers: dict[str, str]
    body: bytes
    verified: bool

    @property
    def event(self) -> dict[str, Any]:
        event: dict[str, Any] = json.loads(self.body)
        return event


class WebhookReceiver:
    """`async with WebhookReceiver() as rx:` serves POSTs on `rx.url`. Set `rx.secret` (the
    endpoint's, shown once when it is created) before events come: a request whose signature does
    not verify with it is answered 401 and kept in `refused`."""

    def __init__(self) -> None:
        self.url = ""
        self.secret: str | None = None
        self.requests: list[Request] = []
        self._verify = documented_verify()
        self._changed = asyncio.Event()
        self._runner: web.AppRunner | None = None

    async def __aenter__(self) -> WebhookReceiver:
        app = web.Application()
        app.router.add_post("/{tail:.*}", self._receive)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _receive(self, request: web.Request) -> web.Response:
        body = await request.read()  # verified over the raw bytes, before parsing them
        headers = dict(request.headers)
        verified = self.secret is not None and self._verify(self.secret, headers, body)
        self.requests.append(Request(headers, body, verified))
        self._changed.set()
        return web.Response(status=204 if verified else 401)

    @property
    def accepted(self) -> list[Request]:
        return [r for r in self.requests if r.verified]

    @property
    def refused(self) -> list[Request]:
        return [r for r in self.requests if not r.verified]

    async def received(self, count: int) -> None:
        """Until `count` events were accepted, or one was refused (the test then says which);
        bound it with asyncio.timeout()."""
        while len(self.accepted) < count and not self.refused:
            self._changed.clear()
            await self._changed.wait()
