"""A whole `voicerun run` on the cloud providers — Deepgram STT, OpenAI LLM, Amazon Polly TTS —
each its real SDK over real sockets to a local server that speaks its protocol."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import pytest_asyncio
from aiohttp import WSMsgType, web
from fakes.usage_api import FakeUsageAPI

from pipeline import SAMPLE_RATE, write_wav
from pipeline.testing import speech_like

ROOT = Path(__file__).resolve().parents[2]
TRANSCRIPTS = ["what time do you open", "thanks, that's all"]


@dataclass
class Cloud:
    """What each fake service received."""

    base: str = ""
    deepgram_query: dict[str, str] = field(default_factory=dict)
    deepgram_auth: str = ""
    deepgram_audio_bytes: int = 0
    deepgram_messages: list[str] = field(default_factory=list)
    openai_requests: list[dict[str, Any]] = field(default_factory=list)
    openai_connections: list[tuple[str, str]] = field(default_factory=list)
    """(what, client port) of each request to OpenAI: the warm-up, then the completions."""
    polly_texts: list[str] = field(default_factory=list)


def tone(seconds: float) -> bytes:
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    return (np.sin(2 * np.pi * 300 * t) * 8000).astype("<i2").tobytes()


@pytest_asyncio.fixture
async def cloud() -> AsyncIterator[Cloud]:
    seen = Cloud()
    finals = iter(TRANSCRIPTS)

    async def listen(request: web.Request) -> web.StreamResponse:
        seen.deepgram_query = dict(request.query)
        seen.deepgram_auth = request.headers.get("Authorization", "")
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        final_end = 0.0  # results are placed on the timeline of the audio received, as Deepgram does
        async for msg in ws:
            if msg.type == WSMsgType.BINARY:
                seen.deepgram_audio_bytes += len(msg.data)
                continue
            data = json.loads(msg.data)
            seen.deepgram_messages.append(data.get("type", ""))
            if data.get("type") == "Finalize":
                now = seen.deepgram_audio_bytes / (2 * SAMPLE_RATE)
                result = {
                    "type": "Results", "channel_index": [0, 1],
                    "duration": round(now - final_end, 3), "start": round(final_end, 3),
                    "is_final": True, "speech_final": True, "from_finalize": True,
                    "channel": {"alternatives": [{"transcript": next(finals, ""), "confidence": 0.98, "words": []}]},
                    "metadata": {"request_id": "r", "model_info": {"name": "n", "version": "v", "arch": "a"},
                                 "model_uuid": "u"},
                }  # fmt: skip
                await ws.send_str(json.dumps(result))
                final_end = now
            elif data.get("type") == "CloseStream":
                await ws.close()
        return ws

    def client_port(request: web.Request) -> str:
        assert request.transport is not None
        return str(request.transport.get_extra_info("peername")[1])

    async def models(request: web.Request) -> web.Response:
        seen.openai_connections.append(("models", client_port(request)))
        return web.json_response({"object": "list", "data": []})

    async def chat(request: web.Request) -> web.StreamResponse:
        seen.openai_connections.append(("chat", client_port(request)))
        body = await request.json()
        seen.openai_requests.append(body)
        said = body["messages"][-1]["content"]
        reply = "We open at five." if "open" in said else "You're welcome, goodbye."
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        words = reply.split(" ")
        for i, word in enumerate(words):
            chunk = {
                "id": "c", "object": "chat.completion.chunk", "created": 0, "model": body["model"],
                "choices": [{"index": 0, "delta": {"content": word + (" " if i < len(words) - 1 else "")},
                             "finish_reason": None}],
            }  # fmt: skip
            await resp.write(f"data: {json.dumps(chunk)}\n\n".encode())
        usage = {
            "id": "c", "object": "chat.completion.chunk", "created": 0, "model": body["model"], "choices": [],
            "usage": {"prompt_tokens": 40, "completion_tokens": len(words), "total_tokens": 40 + len(words),
                      "prompt_tokens_details": {"cached_tokens": 32}},
        }  # fmt: skip
        await resp.write(f"data: {json.dumps(usage)}\n\ndata: [DONE]\n\n".encode())
        await resp.write_eof()
        return resp

    async def speech(request: web.Request) -> web.StreamResponse:
        body = json.loads(await request.read())
        seen.polly_texts.append(body["Text"])
        resp = web.StreamResponse(
            headers={"Content-Type": "audio/pcm", "x-amzn-RequestCharacters": str(len(body["Text"]))}
        )
        await resp.prepare(request)
        await resp.write(tone(0.4))
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_get("/v1/listen", listen)
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/v1/models", models)
    app.router.add_post("/v1/speech", speech)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    seen.base = f"127.0.0.1:{port}"
    try:
        yield seen
    finally:
        await runner.cleanup()


async def test_a_call_on_deepgram_openai_and_polly(cloud: Cloud, tmp_path: Path) -> None:
    """The whole path, billing included: the call's usage reaches the usage-tracking API."""
    async with FakeUsageAPI(api_key="pg-test-key") as usage_api:
        await _cloud_call(cloud, usage_api, tmp_path)


async def _cloud_call(cloud: Cloud, usage_api: FakeUsageAPI, tmp_path: Path) -> None:
    workflow = tmp_path / "cloud.yaml"
    workflow.write_text(f"""
version: 1
slug: cloud-desk
defaults:
  stt: {{provider: deepgram, model: nova-3, options: {{base_url: "ws://{cloud.base}", keyterms: [Trattoria]}}}}
  llm: {{provider: openai, model: gpt-4o-mini, options: {{base_url: "http://{cloud.base}/v1"}}}}
  tts: {{provider: polly, options: {{endpoint_url: "http://{cloud.base}", voice: Matthew}}}}
  turn: {{end_of_turn: silence}}  # the caller is a tone, which the end-of-turn model cannot judge
start: host
agents:
  host:
    instructions: You answer questions about Trattoria.
""")
    caller = tmp_path / "caller.wav"
    silence = np.zeros(int(1.5 * SAMPLE_RATE), np.int16)
    write_wav(
        caller, [np.concatenate([silence, speech_like(1.2), silence, speech_like(0.8, seed=1), silence])]
    )
    report, call = tmp_path / "report.json", tmp_path / "call.wav"
    env = {
        **{k: v for k, v in os.environ.items() if k in ("PATH", "HOME")},
        "HF_HUB_OFFLINE": "1", "VOICERUN_LOG_LEVEL": "warning",
        "DEEPGRAM_API_KEY": "dg-test-key", "OPENAI_API_KEY": "sk-test",
        "AWS_ACCESS_KEY_ID": "AKIATEST", "AWS_SECRET_ACCESS_KEY": "secret", "AWS_REGION": "us-east-1",
        "VOICERUN_DATA_DIR": str(tmp_path / "data"), "VOICERUN_USAGE_API_URL": usage_api.url,
        "VOICERUN_USAGE_API_KEY": "pg-test-key", "VOICERUN_USAGE_AGENT_ID": "agent-42",
        "VOICERUN_USAGE_CUSTOMER_ID": "trattoria", "VOICERUN_USAGE_PLAN": "growth",
    }  # fmt: skip
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agent", "run", "--workflow", str(workflow), "--input", str(caller),
        "--output", str(call), "--report", str(report), "--fast",
        cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await asyncio.wait_for(proc.communicate(), timeout=120)
    assert proc.returncode == 0, err.decode()[-3000:]

    data = json.loads(report.read_text())
    said = [(e["role"], e["content"]) for e in data["transcript"] if e["role"] in ("user", "assistant")]
    assert said == [
        ("user", "what time do you open"),
        ("assistant", "We open at five."),
        ("user", "thanks, that's all"),
        ("assistant", "You're welcome, goodbye."),
    ]
    # Deepgram: the SDK's socket, our options and key, audio streamed, a Finalize per utterance
    assert cloud.deepgram_auth == "Token dg-test-key"
    assert cloud.deepgram_query["model"] == "nova-3" and cloud.deepgram_query["encoding"] == "linear16"
    assert cloud.deepgram_query["sample_rate"] == "16000"
    assert cloud.deepgram_messages.count("Finalize") == 2
    assert cloud.deepgram_audio_bytes >= 2.0 * SAMPLE_RATE * 2  # at least the two utterances
    # OpenAI: streamed with usage, the conversation carried over between turns
    assert [r["stream_options"] for r in cloud.openai_requests] == [{"include_usage": True}] * 2
    # The LLM's connection was opened at call start, and the first turn used it.
    assert [what for what, _ in cloud.openai_connections] == ["models", "chat", "chat"]
    assert cloud.openai_connections[0][1] == cloud.openai_connections[1][1]
    assert cloud.openai_requests[1]["messages"][-3:] == [
        {"role": "user", "content": "what time do you open"},
        {"role": "assistant", "content": "We open at five."},
        {"role": "user", "content": "thanks, that's all"},
    ]
    # Polly: one request per spoken segment
    assert cloud.polly_texts == ["We open at five.", "You're welcome, goodbye."]
    usage = data["usage"]
    assert (usage["llm_prompt_tokens"], usage["llm_cached_tokens"]) == (80, 64)
    assert usage["tts_characters"] == len("We open at five.") + len("You're welcome, goodbye.")
    assert usage["stt_audio_seconds"] >= 2.0
    turns = data["metrics"]["turns"]
    assert len(turns) == 2 and all(t["e2e_latency_ms"] is not None for t in turns)
    # Billing: the six steps, once each, with the call's exact usage
    call_id = data["call_id"]
    assert usage_api.applied_steps(call_id) == ["customer", "session", "stt", "llm", "tts", "indicator"]
    sent = {a.step: a.json for a in usage_api.applied}
    assert sent["session"] == {"sessionId": call_id, "agentId": "agent-42", "customerId": "trattoria"}
    assert sent["stt"]["provider"] == "deepgram" and sent["stt"]["model"] == "nova-3"
    assert sent["stt"]["audioMinutes"] == pytest.approx(usage["stt_audio_seconds"] / 60, abs=1e-4)
    assert sent["llm"] == {
        "sessionId": call_id, "provider": "openai", "model": "gpt-4o-mini", "plan": "growth",
        "promptTokens": usage["llm_prompt_tokens"], "completionTokens": usage["llm_completion_tokens"],
        "cachedTokens": usage["llm_cached_tokens"],
    }  # fmt: skip
    assert sent["tts"] == {
        "sessionId": call_id, "provider": "amazon-polly", "model": "default", "plan": "growth",
        "characters": usage["tts_characters"],
    }  # fmt: skip
    assert sent["indicator"]["totalDuration"] == pytest.approx(data["duration_seconds"] / 60, abs=1e-5)
    assert all(r.headers["paygent-api-key"] == "pg-test-key" for r in usage_api.requests)
