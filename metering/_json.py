"""JSON as the ledger stores it (transcripts, call metadata), and the one conversion to it."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TypeAlias

JSONValue: TypeAlias = str | int | float | bool | Sequence["JSONValue"] | Mapping[str, "JSONValue"] | None


def plain(value: object) -> JSONValue:
    """`value` as strict JSON, which SQLite and PostgreSQL JSON columns both take.

    What JSON has no word for (a datetime or a Decimal a tool returned, NaN) becomes its text:
    a transcript is written with its call's close, and refusing one value would refuse the close
    and with it the call's price and bill.
    """
    if value is None or isinstance(value, str | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return str(value)
