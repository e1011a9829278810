"""/api/v1/webhooks: a tenant's webhook endpoints (the ledger's outbox delivers to them)."""

from __future__ import annotations

from datetime import UTC, datetime

from aiohttp import web
from pydantic import Field

from metering import Ledger

from ._calls import answer, body_of
from ._errors import TENANT, ApiError
from ._models import Request, Response
from ._openapi import ApiRoute


class CreateEndpoint(Request):
    url: str = Field(max_length=2048, pattern=r"^https?://", description="Receives signed POSTs")
    events: list[str] | None = Field(default=None, description="Event types to receive; all when absent")


class Endpoint(Response):
    id: str
    url: str
    events: list[str] | None
    created_at: str
    disabled_at: str | None


class NewEndpoint(Endpoint):
    secret: str = Field(description="Signs this endpoint's events (docs/webhooks.md); shown only now")


class EndpointList(Response):
    items: list[Endpoint]


def _iso(t: datetime | None) -> str | None:
    return None if t is None else t.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


class WebhookRoutes:
    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger

    def routes(self) -> list[ApiRoute]:
        tags = ("webhooks",)
        return [
            ApiRoute("GET", "/api/v1/webhooks", self.list, "The tenant's webhook endpoints", EndpointList,
                     errors=(401, 429), tags=tags),
            ApiRoute("POST", "/api/v1/webhooks", self.create, "Add a webhook endpoint", NewEndpoint,
                     body=CreateEndpoint, status=201, errors=(400, 401, 413, 415, 422, 429), tags=tags),
            ApiRoute("DELETE", "/api/v1/webhooks/{id}", self.delete, "Remove a webhook endpoint", Endpoint,
                     errors=(401, 404, 429), tags=tags),
        ]  # fmt: skip

    async def list(self, request: web.Request) -> web.Response:
        views = await self.ledger.webhook_endpoints(request[TENANT])
        items = [
            Endpoint(id=v.id, url=v.url, events=list(v.events) if v.events else None,
                     created_at=_iso(v.created_at) or "", disabled_at=_iso(v.disabled_at))
            for v in views
        ]  # fmt: skip
        return answer(EndpointList(items=items))

    async def create(self, request: web.Request) -> web.Response:
        body: CreateEndpoint = await body_of(request, CreateEndpoint)
        try:
            new = await self.ledger.create_webhook_endpoint(request[TENANT], body.url, body.events)
        except ValueError as exc:
            raise ApiError(422, "invalid request", [{"field": "events", "message": str(exc)}]) from None
        created = NewEndpoint(
            id=new.id, url=new.url, events=list(new.events) if new.events else None,
            created_at=_iso(new.created_at) or "", disabled_at=None, secret=new.secret,
        )  # fmt: skip
        return answer(created, 201)

    async def delete(self, request: web.Request) -> web.Response:
        endpoint_id = request.match_info["id"]
        views = {v.id: v for v in await self.ledger.webhook_endpoints(request[TENANT])}
        if endpoint_id not in views or not await self.ledger.delete_webhook_endpoint(
            endpoint_id, tenant=request[TENANT]
        ):
            raise ApiError(404, "no such webhook endpoint")
        v = views[endpoint_id]
        gone = Endpoint(id=v.id, url=v.url, events=list(v.events) if v.events else None,
                        created_at=_iso(v.created_at) or "", disabled_at=_iso(v.disabled_at))  # fmt: skip
        return answer(gone)
