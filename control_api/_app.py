"""The control API's aiohttp application: auth, limits, errors, routes."""

from __future__ import annotations

from aiohttp import web
from sqlalchemy.exc import SQLAlchemyError

from metering import Ledger, metrics_handler
from workflows import WorkflowRegistry

from ._calls import CallRoutes
from ._errors import MAX_BODY, TENANT, ApiError, Handler, errors
from ._livekit import LiveKitCalls
from ._workflows import WorkflowRoutes

PUBLIC = frozenset({"/healthz", "/readyz", "/metrics"})
LEDGER = web.AppKey("ledger", Ledger)


@web.middleware
async def auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path in PUBLIC:
        return await handler(request)
    header = request.headers.get("Authorization", "")
    scheme, _, key = header.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise ApiError(401, "missing API key: send Authorization: Bearer <key>")
    tenant = await request.app[LEDGER].api_key_tenant(key.strip())
    if tenant is None:
        raise ApiError(401, "unknown or revoked API key")
    request[TENANT] = tenant
    return await handler(request)


def create_app(ledger: Ledger, registry: WorkflowRegistry, livekit: LiveKitCalls) -> web.Application:
    app = web.Application(middlewares=[errors, auth], client_max_size=MAX_BODY)
    app[LEDGER] = ledger

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(_: web.Request) -> web.Response:
        try:
            await ledger.schema_revision()
        except (SQLAlchemyError, OSError) as exc:
            raise ApiError(503, f"database unreachable: {type(exc).__name__}") from None
        return web.json_response({"status": "ready"})

    app.add_routes(
        [web.get("/healthz", healthz), web.get("/readyz", readyz), web.get("/metrics", metrics_handler)]
    )
    app.add_routes(CallRoutes(ledger, registry, livekit).routes())
    app.add_routes(WorkflowRoutes(registry).routes())
    return app
