"""Synchronous Python tools run in worker processes, where a timeout can stop them.

A thread cannot be stopped: a sync tool that never returned kept its thread, so the process never
exited and a worker serving many calls leaked one thread per hung tool. Here a tool past its
timeout has its worker process killed, and the pool starts another.

One pool per process, started on the first sync tool call, with at most WORKERS processes, forked
from a forkserver (never from this threaded asyncio process) that has already imported this
module, so a new worker costs a fork, not an interpreter start. It is stopped at exit. Arguments
go in and results come back as JSON data; whatever the tool does wrong comes back as an error.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import importlib
import inspect
import multiprocessing
import signal
import sys
import threading
import traceback
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from pebble import ProcessPool

from ._errors import ToolError
from ._json import JSONValue, json_safe

__all__ = ["ChildResult", "resolve", "run_in_process"]

WORKERS = 4
"""Sync tools running at once in a process; more wait for a worker."""
START_TIMEOUT_S = 60.0
"""The most the first worker may take to start (a fork of a server importing our packages)."""
STOP_TIMEOUT_S = 5.0


@dataclass(frozen=True, slots=True)
class ChildResult:
    """What a worker sends back: the result, or why there is none (and the tool's traceback)."""

    result: JSONValue = None
    error: str | None = None
    traceback: str | None = None


def resolve(target: str) -> Callable[..., object]:
    """The function `module:name` names; ToolError if the module has no such function."""
    module_name, _, attr = target.partition(":")
    fn = getattr(importlib.import_module(module_name), attr, None)
    if not callable(fn):
        raise ToolError(f"python tool target {target!r}: module {module_name!r} has no function {attr!r}")
    return fn  # type: ignore[no-any-return]


# -- in the worker -----------------------------------------------------------------------------


def _ready() -> bool:
    return True


def _ignore_interrupts() -> None:
    # Ctrl-C in a terminal signals the whole process group: the calling process decides what a
    # SIGINT means (end the call gracefully), so a tool running then must not die of it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


async def _awaited(awaitable: Awaitable[object]) -> object:
    return await awaitable


def _call(target: str, arguments: dict[str, Any], path: list[str], max_chars: int) -> ChildResult:
    if sys.path != path:  # the caller's sys.path now, not the one the forkserver started with
        sys.path[:] = path
        importlib.invalidate_caches()
    try:
        fn = resolve(target)
    except ToolError as exc:
        return ChildResult(error=str(exc))
    # importing runs the module's code, which may raise anything, SystemExit included
    except BaseException as exc:
        return ChildResult(error=f"cannot import {target!r}: {type(exc).__name__}: {exc}")
    try:
        # stdout is the command's result (`voicerun test` lines, a transcript): a tool's prints
        # are diagnostics
        with contextlib.redirect_stdout(sys.stderr):
            result = fn(**arguments)
            if inspect.isawaitable(result):
                result = asyncio.run(_awaited(result))
        return ChildResult(result=json_safe(result, max_chars=max_chars))
    # the tool's own code: whatever it raises (even SystemExit) is its error result
    except BaseException as exc:
        return ChildResult(error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc())


# -- in the calling process --------------------------------------------------------------------


class _Pool:
    def __init__(self) -> None:
        self._pool: ProcessPool | None = None
        self._lock = threading.Lock()
        self._exit_hook = False

    def running(self) -> ProcessPool | None:
        pool = self._pool
        return pool if pool is not None and pool.active else None

    def start(self) -> ProcessPool:
        """The running pool, started (blocking: call it off the event loop) if there is none."""
        with self._lock:
            pool = self.running()
            if pool is not None:
                return pool
            if self._pool is not None:  # broken (every worker died at once): free its threads
                _stop(self._pool)
                self._pool = None
            context = multiprocessing.get_context("forkserver")
            context.set_forkserver_preload([__name__])
            pool = ProcessPool(max_workers=WORKERS, context=context, initializer=_ignore_interrupts)
            try:
                # the first task starts the workers; waiting for it keeps that out of a tool's timeout
                pool.schedule(_ready).result(timeout=START_TIMEOUT_S)
            except BaseException:
                _stop(pool)
                raise
            if not self._exit_hook:
                atexit.register(self.stop)
                self._exit_hook = True
            self._pool = pool
            return pool

    def stop(self) -> None:
        with self._lock:
            if self._pool is not None:
                _stop(self._pool)
                self._pool = None


def _stop(pool: ProcessPool) -> None:
    pool.stop()  # type: ignore[no-untyped-call]  # not annotated in pebble
    pool.join(timeout=STOP_TIMEOUT_S)


_POOL = _Pool()
"""The process's pool: workers are processes, and one set of them serves every call."""


async def run_in_process(
    target: str, arguments: Mapping[str, Any], timeout_s: float, max_chars: int
) -> Future[ChildResult]:
    """Schedule target(**arguments) on a worker; the future's result is its ChildResult.

    The pool is started (off the event loop) on first use. Past timeout_s of running the worker
    is killed and the future raises TimeoutError; cancelling the future kills it too. A worker
    that dies makes the future raise pebble.ProcessExpired.
    """
    pool = _POOL.running()
    if pool is None:
        pool = await asyncio.to_thread(_POOL.start)
    future: Future[ChildResult] = pool.schedule(
        _call, args=(target, json_safe(dict(arguments)), list(sys.path), max_chars), timeout=timeout_s
    )
    return future
