"""Which process owns a call, and whether that process is provably gone.

A pid alone proves nothing: pids are reused, and mean another process in another PID namespace
(container) or after a reboot. A process is named by its host, a "machine" key (the boot id and
the PID namespace: where a pid means one thing), its pid, and its start time in clock ticks since
boot (field 22 of /proc/PID/stat). It is gone only if the machine key is ours and that pid is not
running or was started at another tick. Anywhere else (another host, a container with its own
PID namespace, a system without /proc) nothing is proven and nothing is closed.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class ProcessIdentity:
    host: str
    machine: str | None
    pid: int
    started: int | None

    @classmethod
    def current(cls) -> ProcessIdentity:
        pid = os.getpid()
        return cls(socket.gethostname(), _machine(), pid, _start_ticks(pid))


def _machine() -> str | None:
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        return None
    return f"{boot}/{namespace}"


def _start_ticks(pid: int) -> int | None:
    """The process' start time, None if it is not running (a zombie has finished running)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: count from the last ")".
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def is_gone(me: ProcessIdentity, machine: str | None, pid: int | None, started: int | None) -> bool:
    """True only when the process named by (machine, pid, started) provably no longer runs."""
    if me.machine is None or machine != me.machine or pid is None or started is None:
        return False
    return _start_ticks(pid) != started
