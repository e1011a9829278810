"""The control API: start, watch and end calls over HTTP (aiohttp), on the ledger's database."""

from ._app import OPENAPI_PATH, create_app, route_table
from ._errors import ApiError
from ._limits import DEFAULT_LIMITS, LocalCounter, RateLimiter, RedisCounter, parse_limits
from ._livekit import END_REASON_KEY, LiveKitCalls, LiveKitConfig

__all__ = [
    "DEFAULT_LIMITS",
    "END_REASON_KEY",
    "OPENAPI_PATH",
    "ApiError",
    "LiveKitCalls",
    "LiveKitConfig",
    "LocalCounter",
    "RateLimiter",
    "RedisCounter",
    "create_app",
    "parse_limits",
    "route_table",
]
