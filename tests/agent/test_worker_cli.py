"""`voicerun worker` as an operator starts it: a real process, against the fake LiveKit server."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from livekit.protocol import agent

from tests.fakes.livekit_server import FakeLiveKitServer

HANG_S = 60  # a safety net for a broken build, not a synchronisation

RULES_ONLY = """
version: 1
slug: desk
start: desk
agents:
  desk:
    instructions: Front desk.
    greeting: Hello.
"""


@pytest.fixture
async def lk() -> AsyncIterator[FakeLiveKitServer]:
    server = FakeLiveKitServer()
    await server.start()
    try:
        yield server
    finally:
        await server.aclose()


def env(tmp_path: Path, **extra: str) -> dict[str, str]:
    workflows = tmp_path / "workflows"
    workflows.mkdir(exist_ok=True)
    (workflows / "desk.yaml").write_text(RULES_ONLY)
    base = {k: v for k, v in os.environ.items() if not k.startswith(("LIVEKIT_", "VOICERUN_"))}
    return {**base, "VOICERUN_WORKFLOWS": str(workflows), "VOICERUN_DATA_DIR": str(tmp_path / "data"),
            "VOICERUN_LOG_FORMAT": "json", **extra}  # fmt: skip


async def worker(*args: str, environ: dict[str, str]) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agent", "worker", "--port", "0", *args, env=environ,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip


async def finished(proc: asyncio.subprocess.Process) -> tuple[int, list[str]]:
    async with asyncio.timeout(HANG_S):
        _, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, err.decode().strip().splitlines()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_without_a_server_url_it_exits_2_naming_the_setting(tmp_path: Path) -> None:
    code, err = await finished(await worker(environ=env(tmp_path)))
    assert code == 2 and len(err) == 1 and "LIVEKIT_URL" in err[0]


async def test_an_unreachable_server_fails_at_once_with_one_line(tmp_path: Path) -> None:
    url = f"ws://127.0.0.1:{closed_port()}"
    proc = await worker(environ=env(tmp_path, LIVEKIT_URL=url, LIVEKIT_API_KEY="k", LIVEKIT_API_SECRET="s"))
    code, err = await finished(proc)
    assert (
        code == 1 and len(err) == 1 and err[0].startswith(f"voicerun: error: cannot reach LiveKit at {url}")
    )


@pytest.mark.parametrize("processes", ["1", "2"])
async def test_a_refused_key_fails_at_once_naming_the_settings(
    lk: FakeLiveKitServer, tmp_path: Path, processes: str
) -> None:
    environ = env(tmp_path, LIVEKIT_URL=lk.url, LIVEKIT_API_KEY=lk.api_key, LIVEKIT_API_SECRET="wrong-secret")
    code, err = await finished(await worker("--processes", processes, environ=environ))
    assert code == 1 and len(err) == 1
    assert "refused LIVEKIT_API_KEY / LIVEKIT_API_SECRET" in err[0] and "wrong-secret" not in err[0]


async def test_sigterm_drains_a_real_worker_process(lk: FakeLiveKitServer, tmp_path: Path) -> None:
    environ = env(tmp_path, LIVEKIT_URL=lk.url, LIVEKIT_API_KEY=lk.api_key, LIVEKIT_API_SECRET=lk.api_secret)
    proc = await worker("--processes", "1", "--agent-name", "desk-agent", environ=environ)
    try:
        async with asyncio.timeout(HANG_S):
            registered = await lk.worker_registered("desk-agent")
            await registered.status_reached(agent.WS_AVAILABLE)
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(HANG_S):
            await registered.status_reached(agent.WS_FULL, after=1)  # draining: no new jobs
        code, err = await finished(proc)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert code == 0, err


async def test_a_worker_process_that_dies_is_restarted_and_registers_again(
    lk: FakeLiveKitServer, tmp_path: Path
) -> None:
    import psutil

    environ = env(tmp_path, LIVEKIT_URL=lk.url, LIVEKIT_API_KEY=lk.api_key, LIVEKIT_API_SECRET=lk.api_secret)
    proc = await worker("--processes", "2", "--agent-name", "pool", environ=environ)
    try:
        async with asyncio.timeout(HANG_S):
            first = await lk.worker_registered("pool")
            second = await lk.worker_registered("pool", after=1)
        assert first.id != second.id
        children = psutil.Process(proc.pid).children()
        assert len(children) == 2
        children[0].kill()  # a crash: SIGKILL, nothing runs on the way out
        async with asyncio.timeout(HANG_S):
            await lk.worker_registered("pool", after=2)  # the replacement
        assert len(psutil.Process(proc.pid).children()) == 2
        proc.send_signal(signal.SIGTERM)
        code, err = await finished(proc)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert code == 0, err
