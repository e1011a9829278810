"""A minimal livekit-agents worker, run as a real process against FakeLiveKitServer.

    python tests/fakes/livekit_worker_app.py start

takes LIVEKIT_URL, LIVEKIT_API_KEY and LIVEKIT_API_SECRET from the environment, like any worker
started with the agents CLI. VOICERUN_TEST_EXECUTOR=process runs jobs in processes (default:
threads, which start faster).

Its job reads `ctx.job.metadata` as JSON. With `"hold": [host, port]` it connects there, writes
its job id and a newline, and waits for a line back before it ends; that lets a test keep a job
running for exactly as long as it needs, without sleeping. With `"raise": "message"` the
entrypoint then raises instead of calling `ctx.shutdown()`.
"""

from __future__ import annotations

import asyncio
import json
import os

from livekit.agents import AgentServer, JobContext, JobExecutorType, cli

AGENT_NAME = "voicerun-subprocess-test"


async def entrypoint(ctx: JobContext) -> None:
    metadata = json.loads(ctx.job.metadata or "{}")
    hold = metadata.get("hold")
    if hold is not None:
        reader, writer = await asyncio.open_connection(hold[0], int(hold[1]))
        try:
            writer.write(f"{ctx.job.id}\n".encode())
            await writer.drain()
            await reader.readline()
        finally:
            writer.close()
            await writer.wait_closed()
    if "raise" in metadata:
        raise RuntimeError(metadata["raise"])
    # Returning is not enough: a job ends on ctx.shutdown() or when the room disconnects.
    ctx.shutdown("entrypoint finished")


def idle_load() -> float:
    return 0.0


def build_server() -> AgentServer:
    executor = JobExecutorType(os.environ.get("VOICERUN_TEST_EXECUTOR", "thread"))
    server = AgentServer(
        job_executor_type=executor,
        # A warm thread executor races shutdown: aclose() while the pool starts one after a job
        # can hang forever in livekit-agents 1.8.9. Process executors are killed in that case.
        num_idle_processes=0 if executor is JobExecutorType.THREAD else 1,
        load_fnc=idle_load,
        load_threshold=0.7,
        host="127.0.0.1",
        port=0,  # not the default 8081: tests and other workers may run on this host
        max_retry=0,
        drain_timeout=60,
    )
    server.rtc_session(entrypoint, agent_name=AGENT_NAME)
    return server


if __name__ == "__main__":
    cli.run_app(build_server())
