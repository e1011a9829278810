"""Python tools for tests/workflows/test_tools.py, imported by the ToolBox as `tools_fixture:<name>`."""

from __future__ import annotations

import asyncio
import threading


def lookup_order(order_id: str, verbose: bool = False) -> dict[str, object]:
    return {
        "order_id": order_id,
        "status": "shipped",
        "verbose": verbose,
        "thread": threading.current_thread().name,
    }


async def lookup_order_async(order_id: str) -> dict[str, object]:
    await asyncio.sleep(0)
    return {"order_id": order_id, "status": "delivered"}


def explode(order_id: str) -> None:
    raise ValueError(f"order {order_id} is corrupt")


NOT_A_FUNCTION = 42


RELEASE = threading.Event()
"""Set by the test that blocks `wait_forever`, once it has seen the timeout."""


def wait_forever(order_id: str) -> None:
    RELEASE.wait()


async def wait_forever_async(order_id: str) -> None:
    await asyncio.Event().wait()
