"""What a LiveKit dispatch asks the worker to do: the job's metadata, checked before the call.

The control API (or `lk dispatch create`) puts a JSON object in the job's metadata. A payload
that is not what this module expects fails that one job with a DispatchError naming the problem
(logged once, the call recorded as failed): never a silent or hung room.
"""

from __future__ import annotations

import json
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

MAX_METADATA_BYTES = 64_000
"""LiveKit caps job metadata well below this; a larger payload is refused before parsing."""

_SLUG = r"^[a-z0-9][a-z0-9-]{0,63}$"
_ID = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"


class DispatchError(ValueError):
    """The job's metadata cannot start a call; the message names the field and the problem."""


class Dispatch(BaseModel):
    """One dispatched call (the fields of the call API's start request, seed 004)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    workflow_slug: str = Field(pattern=_SLUG)
    call_id: str | None = Field(default=None, pattern=_ID)
    """The control API's id for the call; None: the worker makes one."""
    user_id: str | None = Field(default=None, max_length=256)
    user_data: dict[str, Any] = Field(default_factory=dict)
    """Values for the workflow's {{user.*}} variables (checked against them when the call is
    prepared)."""
    metadata: dict[str, Any] = Field(default_factory=dict)
    """Stored with the call, never interpreted."""
    tenant: str | None = Field(default=None, pattern=_ID)
    """Whose provider keys and billing identity the call uses."""
    direction: Literal["inbound", "outbound", "web"] | None = None
    """outbound: the control API dialled a phone; web: a client joined; inbound: a phone called."""
    recording: bool = False
    """Record the call (caller left, agent right) to the worker's recording store."""
    max_duration: float | None = Field(default=None, gt=0, le=86_400)
    """Seconds; instead of the workflow's max_duration_seconds."""

    @classmethod
    def parse(cls, raw: str | bytes) -> Dispatch:
        if isinstance(raw, bytes):
            try:
                raw = raw.decode()
            except UnicodeDecodeError:
                raise DispatchError("job metadata is not UTF-8 text") from None
        if len(raw.encode()) > MAX_METADATA_BYTES:
            raise DispatchError(f"job metadata is larger than {MAX_METADATA_BYTES:,} bytes")
        if not raw.strip():
            raise DispatchError(
                'job metadata is empty: it must be a JSON object with at least "workflow_slug"'
            )
        try:
            data = json.loads(raw)
        except (json.JSONDecodeError, RecursionError) as exc:
            detail = (
                f" ({exc.msg} at line {exc.lineno} column {exc.colno})"
                if isinstance(exc, json.JSONDecodeError)
                else ""
            )
            raise DispatchError(f"job metadata is not valid JSON{detail}") from None
        if not isinstance(data, dict):
            raise DispatchError(f"job metadata must be a JSON object, got {type(data).__name__}")
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise DispatchError(f"job metadata: {_problems(exc)}") from None


def _problems(exc: ValidationError) -> str:
    out = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error["loc"]) or "(top level)"
        message = str(error["msg"])
        if error["type"] == "string_pattern_mismatch":
            message = "has characters or a length that are not allowed"
        elif error["type"] == "extra_forbidden":
            message = "is not a field (fields: " + ", ".join(Dispatch.model_fields) + ")"
        out.append(f"{where} {message}" if error["type"] != "missing" else f"{where} is required")
    return "; ".join(out)


def redacted(raw: str, limit: int = 120) -> str:
    """A payload for a log line: cut short, control characters escaped (it came off the wire)."""
    text = re.sub(r"[\x00-\x1f\x7f]", lambda m: f"\\x{ord(m.group()):02x}", raw[:limit])
    return text + ("..." if len(raw) > limit else "")
