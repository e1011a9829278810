"""`voicerun keys create` and `voicerun api` as an operator runs them: real processes, the
ledger on disk, LiveKit answered by the fake server."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from pathlib import Path

import aiohttp
import psutil

from tests.agent.test_worker_cli import HANG_S, closed_port, env, finished, lk  # noqa: F401 (fixture)
from tests.fakes.livekit_server import FakeLiveKitServer


async def voicerun(*args: str, environ: dict[str, str]) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agent", *args, env=environ,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip


async def logged(proc: asyncio.subprocess.Process, event: str, count: int) -> list[dict[str, object]]:
    """Read the process's JSON log lines until `event` has been logged `count` times."""
    assert proc.stderr is not None
    seen: list[dict[str, object]] = []
    async with asyncio.timeout(HANG_S):
        while len(seen) < count:
            line = await proc.stderr.readline()
            assert line, f"the process ended before logging {event} {count} times"
            record = json.loads(line)
            if record.get("event") == event:
                seen.append(record)
    return seen


async def test_the_api_serves_from_several_processes_on_one_port_and_stops_on_sigterm(
    lk: FakeLiveKitServer,  # noqa: F811
    tmp_path: Path,
) -> None:
    environ = env(tmp_path, LIVEKIT_URL=lk.url, LIVEKIT_API_KEY=lk.api_key, LIVEKIT_API_SECRET=lk.api_secret)
    code, out = await finished_out(await voicerun("keys", "create", "--tenant", "acme", environ=environ))
    assert code == 0 and out[0].startswith("vr_")
    key = out[0]
    port = closed_port()
    proc = await voicerun("api", "--port", str(port), "--processes", "2", environ=environ)
    try:
        listening = await logged(proc, "api_listening", 2)
        assert {r["port"] for r in listening} == {port}
        children = psutil.Process(proc.pid).children()
        assert len(children) == 2
        headers = {"Authorization": f"Bearer {key}"}
        async with aiohttp.ClientSession(f"http://127.0.0.1:{port}", headers=headers) as http:
            for _ in range(4):  # new connections: the kernel spreads them over both processes
                async with http.post(
                    "/api/v1/calls", json={"workflow_slug": "desk"}, headers={"Connection": "close"}
                ) as r:
                    assert r.status == 201, await r.text()
            async with http.get("/api/v1/calls") as r:
                assert r.status == 200 and (await r.json())["total"] == 4
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(HANG_S):
            code = await proc.wait()
        assert code == 0
        assert not any(c.is_running() and c.status() != psutil.STATUS_ZOMBIE for c in children)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert len(lk.calls_to("CreateRoom")) == 4


async def finished_out(proc: asyncio.subprocess.Process) -> tuple[int, list[str]]:
    async with asyncio.timeout(HANG_S):
        out, _ = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode().strip().splitlines()
