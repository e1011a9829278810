"""Control API throughput: GET /api/v1/calls/{id} and POST /api/v1/calls, on PostgreSQL (or SQLite).

The API runs in this process (one aiohttp server, as `voicerun api` runs it); the load comes
from wrk (`apt-get install wrk`), N connections on one thread.
POST /calls talks to the fake LiveKit server's Twirp stub (tests/fakes), in a third process.

    .venv/bin/python bench/api_throughput.py [--database postgresql://postgres@127.0.0.1:5432/test]
        [--seconds 10] [--connections 32]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def _livekit_server(ready: mp.Queue) -> None:  # type: ignore[type-arg]
    from tests.fakes.livekit_server import FakeLiveKitServer

    async def main() -> None:
        server = FakeLiveKitServer()
        await server.start()
        ready.put((server.url, server.api_key, server.api_secret))
        await asyncio.Event().wait()

    asyncio.run(main())


_WRK_SCRIPT = """
wrk.method = os.getenv("WRK_METHOD")
wrk.headers["Authorization"] = "Bearer " .. os.getenv("WRK_KEY")
wrk.headers["Content-Type"] = "application/json"
local body = os.getenv("WRK_BODY")
if body ~= "" then wrk.body = body end
done = function(summary, latency, requests)
  io.write(string.format("RESULT %d %d %f %f %f\\n", summary.requests,
    summary.errors.status + summary.errors.connect + summary.errors.read + summary.errors.write
    + summary.errors.timeout, summary.duration / 1e6,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000))
end
"""


async def serve(database_url: str, livekit: tuple[str, str, str]) -> tuple[object, str, str, object]:
    from aiohttp import web

    from control_api import LiveKitCalls, LiveKitConfig, LocalCounter, RateLimiter, create_app
    from metering import CallOpened, Ledger, load_catalog
    from workflows import WorkflowRegistry, load_workflow

    ledger = await Ledger.open(database_url, catalog=load_catalog())
    workflow = load_workflow(Path("workflows/examples/front-desk.yaml"))
    lk = LiveKitCalls(LiveKitConfig(url=livekit[0], api_key=livekit[1], api_secret=livekit[2]))
    unlimited = RateLimiter(
        LocalCounter(), dict.fromkeys(("dial", "create", "status", "list", "other"), 10**9)
    )
    app = create_app(ledger, WorkflowRegistry({workflow.slug: (workflow, Path("x"))}), lk, limiter=unlimited)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    port = runner.addresses[0][1]
    key = (await ledger.create_api_key("bench")).key
    call_id = str(uuid.uuid4())
    from datetime import UTC, datetime

    await ledger.write(
        [
            CallOpened(
                call_id=call_id, workflow_slug=workflow.slug, started_at=datetime.now(UTC), tenant="bench"
            )
        ]
    )
    return runner, f"http://127.0.0.1:{port}", key, (ledger, lk, call_id, workflow.slug)


def measure(
    label: str, url: str, key: str, method: str, body: str | None, seconds: float, connections: int
) -> None:
    """wrk drives the load (C, one thread): a Python client on this 2-core machine would take
    the CPU the server is being measured on."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(_WRK_SCRIPT)
    env = {**os.environ, "WRK_METHOD": method, "WRK_KEY": key, "WRK_BODY": body or ""}
    cpu0 = time.process_time()
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds:.0f}s", "-s", script.name, url],
        env=env, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    os.unlink(script.name)
    cpu = time.process_time() - cpu0
    requests, errors, wall, p50, p99 = next(
        line.split()[1:] for line in out.splitlines() if line.startswith("RESULT")
    )
    wall_s = float(wall)
    print(f"{label:<22} {int(requests) / wall_s:>8.0f} req/s  p50 {float(p50):6.1f} ms  p99 {float(p99):6.1f} ms  "
          f"errors {errors}  server CPU {cpu / wall_s:.2f} cores", flush=True)  # fmt: skip


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
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--asyncio", action="store_true", help="asyncio's own loop rather than uvloop's")
    args = ap.parse_args()
    import logging

    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    ready: mp.Queue = mp.Queue()  # type: ignore[type-arg]
    lk_proc = mp.Process(target=_livekit_server, args=(ready,), daemon=True)
    lk_proc.start()
    livekit = ready.get()

    async def run() -> None:
        from metering import database_url

        if args.database:
            url, name = await create_database(args.database)
            where = f"PostgreSQL (database {name})"
        else:
            url = database_url(None, Path(tempfile.mkdtemp()))
            where = "SQLite"
        runner, base, key, (ledger, lk, call_id, slug) = await serve(url, livekit)
        print(f"machine: {os.cpu_count()} cores; ledger: {where}; {args.connections} connections, "
              f"{args.seconds:.0f} s each", flush=True)  # fmt: skip
        loop = asyncio.get_running_loop()
        get = f"{base}/api/v1/calls/{call_id}"
        await loop.run_in_executor(
            None, measure, "GET /calls/{id}", get, key, "GET", None, args.seconds, args.connections
        )
        body = json.dumps({"workflow_slug": slug})
        await loop.run_in_executor(None, measure, "POST /calls", f"{base}/api/v1/calls", key, "POST", body,
                                   args.seconds, args.connections)  # fmt: skip
        await runner.cleanup()  # type: ignore[attr-defined]
        await lk.aclose()  # type: ignore[attr-defined]
        await ledger.aclose()  # type: ignore[attr-defined]

    if args.asyncio:
        asyncio.run(run())
    else:
        from agent._api_cmd import run_on_uvloop

        run_on_uvloop(run())  # as `voicerun api` runs
    lk_proc.terminate()


if __name__ == "__main__":
    main()
