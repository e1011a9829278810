"""Anything a tool returns (or a YAML file holds) as JSON data: what the LLM, the transcript and
the call report can carry. A Python tool may return a datetime, a set, bytes, a dataclass, a
cycle or NaN; converting at the tool boundary keeps the end of a call from failing on it."""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import enum
import json
import math
from collections.abc import Mapping, Set
from typing import Any

from ._limits import LIMITS

__all__ = ["BYTES_KEY", "JSONValue", "capped", "json_safe"]

JSONValue = dict[str, Any] | list[Any] | str | int | float | bool | None
BYTES_KEY = "$bytes_base64"
"""bytes become {"$bytes_base64": "..."}: marked, so they are never mistaken for text."""
CYCLE = "<cycle>"
TOO_DEEP = "<nested too deeply>"


def json_safe(value: object, *, max_chars: int | None = None) -> JSONValue:
    """value as JSON data: datetimes as ISO strings, sets as sorted lists, bytes marked and
    base64-encoded, dataclasses and pydantic models as mappings, NaN and infinities as null, a
    container inside itself as "<cycle>", anything else as its repr. Strings (and reprs) longer
    than max_chars are cut, and say so."""
    return _Converter(max_chars).convert(value, 0)


class _Converter:
    def __init__(self, max_chars: int | None) -> None:
        self.max_chars = max_chars
        self.active: set[int] = set()
        """Containers being converted: one met again inside itself is a cycle."""

    def text(self, value: str) -> str:
        if self.max_chars is None or len(value) <= self.max_chars:
            return value
        return value[: self.max_chars] + f"... [cut: {len(value) - self.max_chars} more characters]"

    def convert(self, value: object, depth: int) -> JSONValue:
        if value is None or isinstance(value, bool):
            return value
        if isinstance(value, str):
            return self.text(str(value))
        if isinstance(value, enum.Enum):
            return self.convert(value.value, depth)
        if isinstance(value, int):
            return int(value)
        if isinstance(value, float):
            return float(value) if math.isfinite(value) else None
        if isinstance(value, dt.date | dt.time):
            return value.isoformat()
        if isinstance(value, dt.timedelta):
            return value.total_seconds()
        if isinstance(value, bytes | bytearray | memoryview):
            return {BYTES_KEY: self.text(base64.b64encode(bytes(value)).decode("ascii"))}
        if depth >= LIMITS.depth:
            return TOO_DEEP
        if id(value) in self.active:
            return CYCLE
        self.active.add(id(value))
        try:
            return self.container(value, depth + 1)
        finally:
            self.active.discard(id(value))

    def container(self, value: object, depth: int) -> JSONValue:
        if isinstance(value, Mapping):
            return {self.key(k): self.convert(v, depth) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.convert(v, depth) for v in value]
        if isinstance(value, Set):
            items = [self.convert(v, depth) for v in value]
            # mixed types do not compare; their JSON text does, and gives one order on every run
            return sorted(items, key=lambda v: json.dumps(v, sort_keys=True))
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return {f.name: self.convert(getattr(value, f.name), depth) for f in dataclasses.fields(value)}
        dump = getattr(value, "model_dump", None)  # a pydantic model
        if callable(dump):
            try:
                return self.convert(dump(), depth)
            except Exception:  # a broken model_dump is still a result, shown as its repr
                pass
        return self.text(_repr(value))

    def key(self, key: object) -> str:
        if isinstance(key, str):
            return self.text(key)
        if key is None or isinstance(key, int | float | dt.date | dt.time | dt.timedelta):
            safe = self.convert(key, 0)  # as json.dumps writes a scalar key
            return safe if isinstance(safe, str) else json.dumps(safe)
        return self.text(_repr(key))


def _repr(value: object) -> str:
    try:
        return repr(value)
    except Exception:  # the tool's object; its repr may raise anything
        return f"<{type(value).__name__} object>"


def capped(value: JSONValue, limit_bytes: int) -> tuple[JSONValue, int | None]:
    """value if its JSON text fits in limit_bytes, else a marked excerpt of that text: the result
    and, when it was cut, the size it had."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    size = len(text.encode("utf-8"))
    if size <= limit_bytes:
        return value, None
    excerpt = text.encode("utf-8")[: limit_bytes // 2].decode("utf-8", "ignore")
    return {
        "truncated": f"the result was {size} bytes, over the {limit_bytes}-byte limit: this is its start",
        "excerpt": excerpt,
    }, size
