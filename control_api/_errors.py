"""Every error the API answers is `{"error": "..."}` with its status, never a stack trace."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable

import structlog
from aiohttp import web

log = structlog.get_logger("voicerun.api")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

MAX_BODY = 64 * 1024
"""A call's start request is a few KB; anything near this is a mistake or an attack."""
API_KEY = web.RequestKey("api_key", str)
TENANT = web.RequestKey("tenant", str)
"""The request's tenant, set by the auth middleware from its API key; every query is scoped by it."""


class ApiError(Exception):
    def __init__(self, status: int, message: str, details: object = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.details = details


def error_response(status: int, message: str, details: object = None) -> web.Response:
    body: dict[str, object] = {"error": message}
    if details is not None:
        body["details"] = details
    return web.json_response(body, status=status, dumps=lambda v: json.dumps(v, default=str))


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        return error_response(exc.status, exc.message, exc.details)
    except web.HTTPRequestEntityTooLarge:
        return error_response(413, f"request body larger than {MAX_BODY:,} bytes")
    except web.HTTPException as exc:
        if exc.status >= 400:
            return error_response(exc.status, exc.reason or "error")
        raise
    except ConnectionResetError:  # the client left before its request was read: nothing to answer
        log.info("api_client_disconnected", path=request.path, method=request.method)
        return error_response(400, "the connection closed before the request was read")
    except Exception:
        log.exception("api_internal_error", path=request.path, method=request.method)
        return error_response(500, "internal error (logged)")
