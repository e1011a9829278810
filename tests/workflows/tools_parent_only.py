"""A tool module that imports in the test process but not in a tool worker process."""

from __future__ import annotations

import multiprocessing

if multiprocessing.parent_process() is not None:
    raise ImportError("only importable in the parent")


def run() -> str:
    return "never in a worker"
