"""One run: a framework's command in a fresh process, its JSON line, or why there is none."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from typing import Any

from .frameworks import REPO, expected_turns


@dataclass
class Run:
    framework: str
    calls: int
    repeat: int
    status: str = "ok"
    """ok, unanswered (some turns got no reply), failed, timeout or skipped."""
    result: dict[str, Any] | None = None
    detail: str = ""
    seconds: float = 0.0
    command: list[str] = field(default_factory=list)


def _child_env() -> dict[str, str]:
    # The runs must not see the harness's venv or import path: a peer imports only its own venv.
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _last_json(stdout: str, calls: int) -> dict[str, Any] | None:
    for line in reversed(stdout.splitlines()):
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if isinstance(obj, dict) and obj.get("calls") == calls:
            return obj
    return None


def _tail(text: str, lines: int = 3) -> str:
    return " | ".join(text.strip().splitlines()[-lines:])


def run_once(framework: str, calls: int, repeat: int, command: list[str], timeout_s: float) -> Run:
    run = Run(framework, calls, repeat, command=command)
    started = time.monotonic()
    # Its own process group, so a timeout takes down anything the run started as well.
    proc = subprocess.Popen(
        command,
        cwd=REPO,
        env=_child_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        run.seconds = time.monotonic() - started
        run.status, run.detail = "timeout", f"no result within {timeout_s:.0f} s"
        return run
    run.seconds = time.monotonic() - started
    run.result = _last_json(stdout, calls)
    if run.result is None:
        run.status = "failed"
        run.detail = f"exit {proc.returncode}, no JSON result: {_tail(stderr or stdout)}"
        return run
    expected = expected_turns(calls)
    turns = int(run.result.get("turns") or 0)
    # The peers say error_count, bench/overhead.py failed_calls.
    errors = int(run.result.get("error_count") or run.result.get("failed_calls") or 0)
    if errors:
        run.status = "failed"
        run.detail = f"{errors} calls failed: {(run.result.get('errors') or [''])[0]}"
    elif turns < expected:
        run.status = "unanswered"
        run.detail = f"{expected - turns} of {expected} turns unanswered"
    return run
