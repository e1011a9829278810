"""The control API: start, watch and end calls over HTTP (aiohttp), on the ledger's database."""

from ._app import OPENAPI_PATH, create_app, route_table
from ._errors import ApiError
from ._limits import DEFAULT_LIMITS, LocalCounter, RateLimiter, RedisCounter, parse_limits
from ._livekit import END_REASON_KEY, LiveKitCalls, LiveKitConfig
from ._scheduler import DEFAULT_MISSED_AFTER, SCHEDULE_LEASE, DialScheduler, SchedulePass

__all__ = [
    "DEFAULT_LIMITS",
    "DEFAULT_MISSED_AFTER",
    "END_REASON_KEY",
    "OPENAPI_PATH",
    "SCHEDULE_LEASE",
    "ApiError",
    "DialScheduler",
    "LiveKitCalls",
    "LiveKitConfig",
    "LocalCounter",
    "RateLimiter",
    "RedisCounter",
    "SchedulePass",
    "create_app",
    "parse_limits",
    "route_table",
]
