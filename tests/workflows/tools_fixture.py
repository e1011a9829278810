"""Python tools for tests/workflows/test_tools.py, imported by the ToolBox as `tools_fixture:<name>`."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import math
import os
import signal
import sys
import threading
import time


def lookup_order(order_id: str, verbose: bool = False) -> dict[str, object]:
    return {"order_id": order_id, "status": "shipped", "verbose": verbose, "pid": os.getpid()}


async def lookup_order_async(order_id: str) -> dict[str, object]:
    await asyncio.sleep(0)
    return {"order_id": order_id, "status": "delivered"}


def explode(order_id: str) -> None:
    raise ValueError(f"order {order_id} is corrupt")


NOT_A_FUNCTION = 42


def spin_forever(order_id: str) -> None:
    while True:
        pass


def sleep_forever(order_id: str) -> None:
    time.sleep(10**6)


def die(order_id: str) -> None:
    os._exit(3)


def exit_tool(order_id: str) -> None:
    sys.exit("no more")


def unpicklable(order_id: str) -> object:
    return {"lock": threading.Lock(), "gen": (i for i in range(3))}


def pid() -> int:
    return os.getpid()


async def exit_async(order_id: str) -> None:
    sys.exit("no more")


def interrupted() -> str:
    os.kill(os.getpid(), signal.SIGINT)
    return "still running"


async def wait_forever_async(order_id: str) -> None:
    await asyncio.Event().wait()


@dataclasses.dataclass
class Booking:
    id: str
    at: datetime.datetime
    tags: frozenset[str]


class Opaque:
    def __repr__(self) -> str:
        return "<Opaque thing>"


def awkward(kind: str) -> object:
    """What a Python tool may return that JSON cannot carry as it is."""
    cyclic: dict[str, object] = {"name": "loop"}
    cyclic["self"] = cyclic
    values: dict[str, object] = {
        "datetime": datetime.datetime(2025, 5, 1, 19, 30, tzinfo=datetime.UTC),
        "set": {"b", "a", "c"},
        "bytes": b"\x00\xffhi",
        "dataclass": Booking("B1", datetime.datetime(2025, 5, 1, 19, 30), frozenset({"window"})),
        "floats": [math.nan, math.inf, -math.inf, 1.5],
        "cycle": cyclic,
        "object": Opaque(),
        "keys": {1: "one", None: "none", (1, 2): "pair"},
        "huge": "x" * (1024 * 1024),
    }
    return values[kind]


async def awkward_async(kind: str) -> object:
    return awkward(kind)
