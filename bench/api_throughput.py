"""Control API throughput: GET /api/v1/calls/{id} and POST /api/v1/calls, on PostgreSQL (or SQLite).

The API is `voicerun api` itself (real processes, --processes N); the load comes from wrk
(`apt-get install wrk`: C, one thread, so the client takes little of the CPU being measured).
POST /calls creates rooms and dispatches on the fake LiveKit server's Twirp stub (tests/fakes),
in a process of its own. The call read back is a finished one with turns, usage and transcript,
as a client polling a call's status would find it.

    .venv/bin/python bench/api_throughput.py [--database postgresql://postgres@127.0.0.1:5432/test]
        [--processes 1] [--seconds 10] [--connections 16 32]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

_WRK_SCRIPT = """
wrk.method = os.getenv("WRK_METHOD")
wrk.headers["Authorization"] = "Bearer " .. os.getenv("WRK_KEY")
wrk.headers["Content-Type"] = "application/json"
local body = os.getenv("WRK_BODY")
if body ~= "" then wrk.body = body end
done = function(summary, latency, requests)
  local errors = summary.errors.status + summary.errors.connect + summary.errors.read
    + summary.errors.write + summary.errors.timeout
  io.write(string.format("RESULT %d %d %f %f %f\\n", summary.requests, errors,
    summary.duration / 1e6, latency:percentile(50) / 1000, latency:percentile(99) / 1000))
end
"""


def _livekit_server(ready: mp.Queue) -> None:  # type: ignore[type-arg]
    from tests.fakes.livekit_server import FakeLiveKitServer

    async def main() -> None:
        server = FakeLiveKitServer()
        await server.start()
        ready.put((server.url, server.api_key, server.api_secret))
        await asyncio.Event().wait()

    asyncio.run(main())


async def prepare(database_url: str) -> tuple[str, str]:
    """Migrate, make a key, and record one finished call of 8 turns; returns (key, call id)."""
    from metering import (
        CallClosed,
        CallOpened,
        Ledger,
        TurnReported,
        UsageLine,
        UsageReported,
        load_catalog,
    )

    ledger = await Ledger.open(database_url, catalog=load_catalog())
    try:
        key = (await ledger.create_api_key("bench")).key
        call_id = str(uuid.uuid4())
        t0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
        turns = range(8)
        transcript = [
            {"role": role, "content": f"{role} line {n}: " + "words " * 12, "agent_name": "front-desk"}
            for n in turns
            for role in ("user", "assistant")
        ]
        await ledger.write(
            [CallOpened(call_id=call_id, workflow_slug="front-desk", started_at=t0, tenant="bench")]
        )
        await ledger.write(
            [
                *(
                    TurnReported(
                        call_id=call_id, turn=n, agent="front-desk", eou_delay_ms=300.0, stt_latency_ms=90.0,
                        llm_ttft_ms=240.0, tts_ttfb_ms=80.0, e2e_latency_ms=650.0, interrupted=False,
                        at=t0 + timedelta(seconds=10 * n),
                    )
                    for n in turns
                ),
                *(
                    UsageReported(call_id=call_id, seq=n, agent="front-desk", at=t0,
                                  line=UsageLine("llm", "openai", "gpt-4o-mini", prompt_tokens=900, completion_tokens=60))
                    for n in turns
                ),
                CallClosed(
                    call_id=call_id, status="completed", reason="user_ended", ended_at=t0 + timedelta(seconds=95),
                    duration_s=95.0, transcript=tuple(transcript), agent_history=("front-desk",),
                ),
            ]
        )  # fmt: skip
    finally:
        await ledger.aclose()
    return key, call_id


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_api(
    database_url: str, livekit: tuple[str, str, str], processes: int, data: Path
) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    limits = ",".join(f"{c}=100000000" for c in ("dial", "create", "status", "list", "other"))
    env = {
        **os.environ, "DATABASE_URL": database_url, "LIVEKIT_URL": livekit[0], "LIVEKIT_API_KEY": livekit[1],
        "LIVEKIT_API_SECRET": livekit[2], "VOICERUN_API_RATE_LIMITS": limits, "VOICERUN_LOG_FORMAT": "json",
        "VOICERUN_LOG_LEVEL": "warning", "VOICERUN_WORKFLOWS": str(ROOT / "workflows" / "examples"),
        "VOICERUN_DATA_DIR": str(data),
    }  # fmt: skip
    argv = [sys.executable, "-m", "agent", "api", "--port", str(port), "--processes", str(processes)]
    proc = subprocess.Popen(argv, env=env, cwd=ROOT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # a bench, not a test: polling for the port is fine here
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                time.sleep(1.0)  # every process listening, not just the first
                return proc, port
        if proc.poll() is not None:
            raise SystemExit(f"voicerun api exited with {proc.returncode}")
        time.sleep(0.1)
    raise SystemExit("voicerun api did not listen within 60 s")


def server_cpu(proc: subprocess.Popen[bytes]) -> float:
    tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    return sum(p.cpu_times().user + p.cpu_times().system for p in tree)


def measure(label: str, url: str, key: str, method: str, body: str | None, seconds: float, connections: int,
            api: subprocess.Popen[bytes]) -> None:  # fmt: skip
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(_WRK_SCRIPT)
    env = {**os.environ, "WRK_METHOD": method, "WRK_KEY": key, "WRK_BODY": body or ""}
    cpu0 = server_cpu(api)
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds:.0f}s", "-s", script.name, url],
        env=env, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    os.unlink(script.name)
    cpu = server_cpu(api) - cpu0
    requests, errors, wall, p50, p99 = next(ln.split()[1:] for ln in out.splitlines() if ln.startswith("RESULT"))
    wall_s = float(wall)
    print(f"{label:<16} {connections:>3} conns {int(requests) / wall_s:>7.0f} req/s  p50 {float(p50):6.1f} ms  "
          f"p99 {float(p99):6.1f} ms  errors {errors}  API CPU {cpu / wall_s:.2f} cores", flush=True)  # fmt: skip


async def create_database(server: str) -> tuple[str, str]:
    import asyncpg
    from sqlalchemy.engine import make_url

    from metering import database_url

    admin = make_url(database_url(server, Path(".")))
    dsn = admin.set(drivername="postgresql").render_as_string(hide_password=False)
    name = f"voicerun_bench_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(dsn)
    await conn.execute(f'CREATE DATABASE "{name}"')
    await conn.close()
    return admin.set(database=name).render_as_string(hide_password=False), name


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument(
        "--database", default=os.environ.get("VOICERUN_TEST_DATABASE_URL"), help="PostgreSQL server URL"
    )
    ap.add_argument("--processes", type=int, default=1, help="voicerun api --processes")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--connections", type=int, nargs="+", default=[16, 32])
    args = ap.parse_args()
    ready: mp.Queue = mp.Queue()  # type: ignore[type-arg]
    lk_proc = mp.Process(target=_livekit_server, args=(ready,), daemon=True)
    lk_proc.start()
    livekit = ready.get()
    data = Path(tempfile.mkdtemp())
    if args.database:
        url, name = asyncio.run(create_database(args.database))
        where = f"PostgreSQL (database {name})"
    else:
        from metering import database_url

        url, where = database_url(None, data), "SQLite"
    key, call_id = asyncio.run(prepare(url))
    api, port = start_api(url, livekit, args.processes, data)
    base = f"http://127.0.0.1:{port}/api/v1"
    print(f"machine: {os.cpu_count()} cores; ledger: {where}; voicerun api --processes {args.processes}; "
          f"{args.seconds:.0f} s a run", flush=True)  # fmt: skip
    try:
        for connections in args.connections:
            measure(
                "GET /calls/{id}", f"{base}/calls/{call_id}", key, "GET", None, args.seconds, connections, api
            )
        body = json.dumps({"workflow_slug": "front-desk"})
        for connections in args.connections:
            measure("POST /calls", f"{base}/calls", key, "POST", body, args.seconds, connections, api)
    finally:
        api.send_signal(signal.SIGTERM)
        api.wait(timeout=60)
        lk_proc.terminate()


if __name__ == "__main__":
    main()
