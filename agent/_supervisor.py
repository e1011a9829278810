"""Runs a command's processes (`voicerun worker --processes N`, `voicerun api --processes N`):
restarts one that dies, with backoff, unless it died while starting; SIGTERM stops them all."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import structlog

log = structlog.get_logger("voicerun.supervisor")

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
RESTART_BACKOFF_S = (1.0, 2.0, 5.0, 10.0, 30.0)
STARTUP_S = 30.0
"""A process that fails within this long of its start failed to start: the pool stops (a bad
setting fails every process alike) instead of restarting it forever."""


class _Child:
    def __init__(self, index: int, argv: list[str]) -> None:
        self.index = index
        self.argv = argv
        self.proc: subprocess.Popen[bytes] | None = None
        self.started = 0.0
        self.restarts = 0


def supervise(argvs: list[list[str]], env: dict[str, str], *, name: str) -> int:
    """Run one child per argv until a signal stops them all; log events are `<name>_process_*`.
    Returns the exit code of a child that failed to start, else 0 if every child ended cleanly."""
    children = [_Child(i, argv) for i, argv in enumerate(argvs)]
    stopping: list[int] = []

    def on_signal(sig: int, _: object) -> None:
        stopping.append(sig)
        for child in children:
            if child.proc is not None and child.proc.poll() is None:
                child.proc.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    for child in children:
        child.proc = subprocess.Popen(child.argv, env=env)
        child.started = time.monotonic()
        log.info(f"{name}_process_started", index=child.index, pid=child.proc.pid)
    failed_to_start: int | None = None
    while True:
        alive = [c for c in children if c.proc is not None and c.proc.poll() is None]
        if not alive and (stopping or failed_to_start is not None):
            break
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        found = next((c for c in children if c.proc is not None and c.proc.pid == pid), None)
        if found is None or found.proc is None:
            continue
        child, code = found, os.waitstatus_to_exitcode(status)
        found.proc.returncode = code
        if stopping or failed_to_start is not None:
            continue
        if time.monotonic() - child.started < STARTUP_S and code in (EXIT_FAILED, EXIT_USAGE):
            log.error(f"{name}_process_failed_to_start", index=child.index, exit_code=code)
            failed_to_start = code
            on_signal(signal.SIGTERM, None)
            continue
        delay = RESTART_BACKOFF_S[min(child.restarts, len(RESTART_BACKOFF_S) - 1)]
        log.error(f"{name}_process_died", index=child.index, exit_code=code, restart_in_s=delay)
        time.sleep(delay)  # the supervisor has nothing else to do meanwhile
        child.restarts += 1
        child.proc = subprocess.Popen(child.argv, env=env)
        child.started = time.monotonic()
    if failed_to_start is not None:
        return failed_to_start
    codes = [c.proc.returncode for c in children if c.proc is not None]
    return EXIT_OK if all(code in (0, -signal.SIGTERM) for code in codes) else EXIT_FAILED
