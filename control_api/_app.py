"""The control API's aiohttp application: auth, limits, errors, and the route table."""

from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from aiohttp import web
from sqlalchemy.exc import SQLAlchemyError

from metering import KeyCipher, Ledger, metrics_handler
from workflows import WorkflowRegistry

from ._analytics import AnalyticsRoutes
from ._calls import CallRoutes, Recordings
from ._errors import API_KEY, MAX_BODY, TENANT, ApiError, Handler, error_response, errors
from ._keys import KeyTenants
from ._limits import LocalCounter, RateLimiter
from ._livekit import LiveKitCalls
from ._models import Health
from ._openapi import ApiRoute, openapi
from ._provider_keys import ProviderKeyRoutes
from ._webhooks import WebhookRoutes
from ._workflows import WorkflowRoutes

KEYS = web.AppKey("keys", KeyTenants)
LIMITER = web.AppKey("limiter", RateLimiter)
LIMIT_CLASS = web.AppKey("limit_class", dict)
PUBLIC = web.AppKey("public", frozenset)
OPENAPI_PATH = "/api/v1/openapi.json"


@web.middleware
async def auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    route = request.match_info.route.resource
    if route is None or route.canonical in request.app[PUBLIC]:
        return await handler(request)  # a public route, or a 404/405 the router answers
    header = request.headers.get("Authorization", "")
    scheme, _, key = header.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise ApiError(401, "missing API key: send Authorization: Bearer <key>")
    tenant = await request.app[KEYS].tenant(key.strip())
    if tenant is None:
        raise ApiError(401, "unknown or revoked API key")
    request[TENANT] = tenant
    request[API_KEY] = key.strip()
    limiter = request.app[LIMITER]
    verdict = await limiter.hit(
        key.strip(), request.app[LIMIT_CLASS].get((request.method, route.canonical), "other")
    )
    headers = {
        "X-RateLimit-Limit": str(verdict.limit),
        "X-RateLimit-Remaining": str(verdict.remaining),
        "X-RateLimit-Reset": str(verdict.reset_s),
    }
    if not verdict.allowed:
        refusal = error_response(
            429, f"rate limit: {verdict.limit} requests a minute; retry in {verdict.reset_s} s"
        )
        refusal.headers.update({**headers, "Retry-After": str(verdict.reset_s)})
        return refusal
    response = await handler(request)
    response.headers.update(headers)
    return response


def _version() -> str:
    try:
        return version("voicerun")
    except PackageNotFoundError:
        return "0"


def create_app(
    ledger: Ledger,
    registry: WorkflowRegistry,
    livekit: LiveKitCalls,
    *,
    limiter: RateLimiter | None = None,
    recordings: Recordings | None = None,
    provider_keys: KeyCipher | None = None,
    keys: KeyTenants | None = None,
    dial_scheduled: Callable[[], None] | None = None,
) -> web.Application:
    """limiter: per-key rate limits (default: seed 002's, counted in this process).
    recordings: the store the workers keep recordings in (None: recordings are not served).
    provider_keys: encrypts tenants' provider keys (None: no master key, /provider-keys answers 409).
    keys: resolves API keys to tenants (default: the ledger's, each remembered for 10 s).
    dial_scheduled: told when a dial is scheduled (the process's DialScheduler.wake, so a call due
    soon is not left to the scheduler's next look)."""
    app = web.Application(middlewares=[errors, auth], client_max_size=MAX_BODY)
    app[KEYS] = keys or KeyTenants(ledger)
    app[LIMITER] = limiter or RateLimiter(LocalCounter())

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response(Health(status="ok").model_dump())

    async def readyz(_: web.Request) -> web.Response:
        try:
            await ledger.schema_revision()
        except (SQLAlchemyError, OSError) as exc:
            raise ApiError(503, f"database unreachable: {type(exc).__name__}") from None
        return web.json_response(Health(status="ready").model_dump())

    routes: list[ApiRoute] = [
        ApiRoute(
            "GET", "/healthz", healthz, "The process is up", Health, public=True, errors=(), tags=("ops",)
        ),
        ApiRoute(
            "GET",
            "/readyz",
            readyz,
            "The database answers",
            Health,
            public=True,
            errors=(503,),
            tags=("ops",),
        ),
        *CallRoutes(ledger, registry, livekit, recordings, dial_scheduled).routes(),
        *WorkflowRoutes(registry).routes(),
        *WebhookRoutes(ledger).routes(),
        *ProviderKeyRoutes(ledger, provider_keys).routes(),
        *AnalyticsRoutes(ledger).routes(),
    ]
    document = openapi(routes, title="voicerun control API", version=_version())

    async def openapi_json(_: web.Request) -> web.Response:
        return web.json_response(document)

    app[PUBLIC] = frozenset({r.path for r in routes if r.public} | {"/metrics", OPENAPI_PATH})
    app[LIMIT_CLASS] = {(r.method, r.path): r.limit for r in routes}
    app.add_routes([r.aiohttp() for r in routes])
    app.add_routes([web.get("/metrics", metrics_handler), web.get(OPENAPI_PATH, openapi_json)])
    app[ROUTES] = tuple(routes)
    return app


ROUTES = web.AppKey("routes", tuple)
"""The app's route table (ApiRoute), for tests that must cover every route."""


def route_table(app: web.Application) -> tuple[Any, ...]:
    return app[ROUTES]
