"""OpenAILLM through the real openai SDK against a local server that speaks the chat completions
protocol as OpenAI does: SSE frames `data: {json}\\n\\n`, a usage chunk with no choices, `[DONE]`.

Each request the server receives takes the next scripted reply; the tests then check what the
provider yielded and what the server was sent.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator, AsyncIterator, MutableMapping, Sequence
from typing import Any

import pytest
import pytest_asyncio
from aiohttp import web
from fakes.openai_api import FAST_RETRY, SHORT, FakeOpenAI, Reply, serve_openai, stall, status

from pipeline import (
    LLMEvent,
    LLMUsage,
    Message,
    ProviderError,
    TextDelta,
    ToolCall,
    ToolCallRequest,
    ToolSpec,
)
from pipeline.providers import OpenAILLM, OpenAILLMConfig
from pipeline.providers._resilience import RetryPolicy, Timeouts

HELLO = [Message(role="user", content="Hi")]


# An answer is due well inside PATIENT even on a machine slowed tenfold; only the tests of a
# server that never answers wait for STALLED's timeout (1 s, against a local answer of ~10 ms).
PATIENT = Timeouts(connect_s=10.0, first_byte_s=10.0, total_s=30.0)
STALLED = Timeouts(connect_s=10.0, first_byte_s=1.0, total_s=30.0)


@pytest_asyncio.fixture
async def server() -> AsyncIterator[FakeOpenAI]:
    async with serve_openai("/v1/chat/completions") as srv:
        yield srv


# -- the protocol ------------------------------------------------------------------------------


def chunk(delta: dict[str, Any] | None = None, *, finish: str | None = None) -> dict[str, Any]:
    """One chat.completion.chunk as OpenAI streams it."""
    return {
        "id": "chatcmpl-test",
        "object": "chat.completion.chunk",
        "created": 1_700_000_000,
        "model": "gpt-4o-mini-2024-07-18",
        "system_fingerprint": "fp_test",
        "choices": [{"index": 0, "delta": delta or {}, "logprobs": None, "finish_reason": finish}],
        "usage": None,
    }


def usage_chunk(prompt: int, completion: int, cached: int = 0) -> dict[str, Any]:
    """The last chunk with stream_options.include_usage: no choices, only usage."""
    return {
        **chunk(),
        "choices": [],
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": cached, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
        },
    }


def text_chunks(*pieces: str) -> list[dict[str, Any]]:
    return [
        chunk({"role": "assistant", "content": "", "refusal": None}),
        *(chunk({"content": p}) for p in pieces),
        chunk(finish="stop"),
    ]


def tool_delta(
    index: int, *, id: str | None = None, name: str | None = None, args: str = ""
) -> dict[str, Any]:
    d: dict[str, Any] = {"index": index, "function": {"arguments": args}}
    if id is not None:
        d["id"] = id
        d["type"] = "function"
        d["function"]["name"] = name
    return {"tool_calls": [d]}


async def open_sse(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8"})
    await resp.prepare(request)
    return resp


def sse(*frames: dict[str, Any] | str, done: bool = True) -> Reply:
    """Stream frames (dicts as JSON, strings verbatim as the data field), then [DONE]."""

    async def reply(request: web.Request) -> web.StreamResponse:
        resp = await open_sse(request)
        for frame in frames:
            data = frame if isinstance(frame, str) else json.dumps(frame)
            await resp.write(f"data: {data}\n\n".encode())
        if done:
            await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    return reply


def drop_after(*frames: dict[str, Any]) -> Reply:
    """Stream frames, then close the connection with the chunked body unfinished."""

    async def reply(request: web.Request) -> web.StreamResponse:
        resp = await open_sse(request)
        for frame in frames:
            await resp.write(f"data: {json.dumps(frame)}\n\n".encode())
        assert request.transport is not None
        request.transport.close()  # flushes what was written, then FIN: no terminating chunk
        return resp

    return reply


def hold(srv: FakeOpenAI, *frames: dict[str, Any]) -> Reply:
    """Stream frames, then keep the response open until the client hangs up."""

    async def reply(request: web.Request) -> web.StreamResponse:
        resp = await open_sse(request)
        for frame in frames:
            await resp.write(f"data: {json.dumps(frame)}\n\n".encode())
        try:
            await srv.release.wait()
        except asyncio.CancelledError:
            srv.hung_up.set()
            raise
        return resp

    return reply


def make_llm(srv: FakeOpenAI, **config: Any) -> OpenAILLM:
    config.setdefault("retry", FAST_RETRY)
    config.setdefault("timeouts", PATIENT)
    return OpenAILLM(OpenAILLMConfig(base_url=srv.url, api_key="sk-test", **config))


async def collect(
    llm: OpenAILLM, messages: Sequence[Message] = HELLO, tools: Sequence[ToolSpec] = ()
) -> list[LLMEvent]:
    try:
        return [event async for event in llm.chat(messages, tools)]
    finally:
        await llm.aclose()


# -- streaming ---------------------------------------------------------------------------------


async def test_text_streams_as_deltas_then_usage(
    server: FakeOpenAI, captured_logs: list[MutableMapping[str, Any]]
) -> None:
    server.script(sse(*text_chunks("Hel", "lo", " there."), usage_chunk(12, 3)))

    events = await collect(make_llm(server))

    assert events == [
        TextDelta(text="Hel"),
        TextDelta(text="lo"),
        TextDelta(text=" there."),
        LLMUsage(prompt_tokens=12, completion_tokens=3, cached_tokens=0),
    ]
    request, done = (
        next(e for e in captured_logs if e["event"] == name) for name in ("llm_request", "llm_done")
    )
    assert request["model"] == "gpt-4o-mini" and request["messages"] == 1
    assert done["prompt_tokens"] == 12 and done["completion_tokens"] == 3
    assert isinstance(done["ttft_ms"], int) and done["ttft_ms"] >= 0


async def test_usage_reports_cached_prompt_tokens(server: FakeOpenAI) -> None:
    server.script(sse(*text_chunks("Ok."), usage_chunk(2048, 5, cached=1920)))

    events = await collect(make_llm(server))

    assert events[-1] == LLMUsage(prompt_tokens=2048, completion_tokens=5, cached_tokens=1920)


async def test_tool_calls_split_across_chunks_come_out_whole_and_in_index_order(server: FakeOpenAI) -> None:
    server.script(
        sse(
            chunk({"role": "assistant", "content": None}),
            chunk(tool_delta(0, id="call_weather", name="get_weather")),
            chunk(tool_delta(0, args='{"ci')),
            chunk(tool_delta(0, args='ty": "Par')),
            chunk(tool_delta(1, id="call_time", name="get_time")),  # parallel call, interleaved
            chunk(tool_delta(0, args='is", "unit')),
            chunk(tool_delta(1, args='{"tz": "Europe/Paris"}')),
            chunk(tool_delta(0, args='": "C"}')),
            chunk(finish="tool_calls"),
            usage_chunk(40, 25),
        )
    )

    events = await collect(make_llm(server))

    assert events == [
        ToolCallRequest(call=ToolCall("call_weather", "get_weather", {"city": "Paris", "unit": "C"})),
        ToolCallRequest(call=ToolCall("call_time", "get_time", {"tz": "Europe/Paris"})),
        LLMUsage(prompt_tokens=40, completion_tokens=25),
    ]


async def test_a_tool_call_without_arguments_gets_an_empty_mapping(server: FakeOpenAI) -> None:
    server.script(sse(chunk(tool_delta(0, id="call_1", name="end_call")), chunk(finish="tool_calls")))

    events = await collect(make_llm(server))

    assert events == [ToolCallRequest(call=ToolCall("call_1", "end_call", {}))]


async def test_invalid_tool_arguments_raise_naming_the_tool(server: FakeOpenAI) -> None:
    server.script(
        sse(
            chunk(tool_delta(0, id="call_1", name="book_table", args='{"party": 4')),
            chunk(finish="tool_calls"),
        )
    )

    with pytest.raises(
        ProviderError, match=r"tool call 'book_table' has invalid JSON arguments: '\{\"party\": 4'"
    ):
        await collect(make_llm(server))


async def test_the_request_carries_history_tools_and_stream_options(server: FakeOpenAI) -> None:
    server.script(sse(*text_chunks("Booked.")))
    messages = [
        Message(role="system", content="You book tables."),
        Message(role="user", content="A table for 4 at 8."),
        Message(
            role="assistant",
            content="",
            tool_calls=(ToolCall("call_1", "book_table", {"party": 4, "time": "20:00"}),),
        ),
        Message(role="tool", content='{"ok": true}', tool_call_id="call_1"),
    ]
    tools = [
        ToolSpec(
            name="book_table",
            description="Books a table.",
            parameters={
                "type": "object",
                "properties": {"party": {"type": "integer"}},
                "required": ["party"],
            },
        )
    ]

    await collect(make_llm(server, model="gpt-test", temperature=0.3, max_tokens=200), messages, tools)

    [body] = server.bodies
    assert body["model"] == "gpt-test"
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert body["temperature"] == 0.3
    assert body["max_tokens"] == 200  # a compatible server; api.openai.com gets max_completion_tokens
    assert body["messages"] == [
        {"role": "system", "content": "You book tables."},
        {"role": "user", "content": "A table for 4 at 8."},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "book_table", "arguments": '{"party": 4, "time": "20:00"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": '{"ok": true}'},
    ]
    assert body["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "book_table",
                "description": "Books a table.",
                "parameters": {
                    "type": "object",
                    "properties": {"party": {"type": "integer"}},
                    "required": ["party"],
                },
            },
        }
    ]
    assert server.auth == ["Bearer sk-test"]


async def test_unset_options_are_not_sent(server: FakeOpenAI) -> None:
    server.script(sse(*text_chunks("Hi.")))

    await collect(make_llm(server))

    [body] = server.bodies
    assert not {"tools", "temperature", "max_tokens", "max_completion_tokens"} & set(body)


# -- failures ----------------------------------------------------------------------------------


async def test_a_server_error_is_retried(server: FakeOpenAI) -> None:
    server.script(status(500, "The server had an error"), sse(*text_chunks("Fine.")))

    events = await collect(make_llm(server))

    assert events == [TextDelta(text="Fine.")]
    assert len(server.bodies) == 2


async def test_a_rejected_key_is_not_retried_and_says_why(server: FakeOpenAI) -> None:
    server.script(status(401, "Incorrect API key provided: sk-test."))

    with pytest.raises(ProviderError) as err:
        await collect(make_llm(server))

    assert str(err.value) == "openai returned 401: Incorrect API key provided: sk-test."
    assert err.value.provider == "openai" and not err.value.retryable
    assert len(server.bodies) == 1


@pytest.mark.parametrize(("code", "retryable"), [(400, False), (404, False), (429, True), (503, True)])
async def test_status_codes_map_to_retryable_or_not(server: FakeOpenAI, code: int, retryable: bool) -> None:
    server.script(status(code, f"status {code}"))

    with pytest.raises(ProviderError, match=f"openai returned {code}: status {code}") as err:
        await collect(make_llm(server, retry=RetryPolicy(attempts=1)))

    assert err.value.retryable is retryable


async def test_a_slow_first_byte_times_out_and_the_retry_succeeds(server: FakeOpenAI) -> None:
    server.script(stall(server), sse(*text_chunks("Here.")))

    events = await collect(make_llm(server, timeouts=STALLED))

    assert events == [TextDelta(text="Here.")]
    assert len(server.bodies) == 2


async def test_a_server_that_never_answers_fails_after_the_attempts(server: FakeOpenAI) -> None:
    server.script(stall(server), stall(server))

    # first_byte_s bounds it (the SDK's read timeout, also first_byte_s, starts later).
    with pytest.raises(ProviderError, match=r"openai: (no response within 1 s|request timed out)") as err:
        await collect(make_llm(server, retry=RetryPolicy(attempts=2, backoff_s=0.001), timeouts=STALLED))

    assert err.value.retryable  # the next provider of a fallback chain may do better
    assert len(server.bodies) == 2


async def test_a_connection_dropped_mid_reply_fails_without_repeating_words(server: FakeOpenAI) -> None:
    server.script(
        drop_after(*text_chunks("I can ", "book that")[:-1]),
        sse(*text_chunks("I can book that.")),  # would be wrong to use: the caller heard half already
    )
    got: list[LLMEvent] = []
    llm = make_llm(server)

    with pytest.raises(ProviderError, match="openai: connection failed") as err:
        async for event in llm.chat(HELLO):
            got.append(event)
    await llm.aclose()

    assert got == [TextDelta(text="I can "), TextDelta(text="book that")]
    assert err.value.provider == "openai"
    assert len(server.bodies) == 1


async def test_a_stream_that_ends_before_its_finish_is_an_error_not_a_complete_reply(
    server: FakeOpenAI,
) -> None:
    # The response ends cleanly, but without a finish reason, usage or [DONE]: a proxy or server that
    # gave up mid-reply. Taken as complete, the rest of the reply would vanish without a trace.
    server.script(sse(*text_chunks("We open at ", "five")[:-1], done=False))
    got: list[LLMEvent] = []
    llm = make_llm(server)

    with pytest.raises(ProviderError, match="openai: the stream ended before the reply finished") as err:
        async for event in llm.chat(HELLO):
            got.append(event)
    await llm.aclose()

    assert got == [TextDelta(text="We open at "), TextDelta(text="five")]
    assert err.value.retryable


async def test_a_reply_without_a_finish_reason_but_with_usage_is_complete(server: FakeOpenAI) -> None:
    # Some compatible servers omit finish_reason; the usage chunk still marks the end.
    server.script(sse(*text_chunks("Ok.")[:-1], usage_chunk(3, 1)))

    assert await collect(make_llm(server)) == [
        TextDelta(text="Ok."),
        LLMUsage(prompt_tokens=3, completion_tokens=1, cached_tokens=0),
    ]


async def test_a_malformed_frame_fails_with_a_clear_message(server: FakeOpenAI) -> None:
    server.script(sse(chunk({"role": "assistant", "content": ""}), '{"choices": [{"delta": {"content": "x"'))

    with pytest.raises(ProviderError, match=r"openai: malformed stream frame \(not JSON"):
        await collect(make_llm(server))

    assert len(server.bodies) == 1


async def test_an_error_event_inside_the_stream_is_retried_before_any_output(server: FakeOpenAI) -> None:
    server.script(
        sse({"error": {"message": "The model is overloaded", "type": "server_error"}}),
        sse(*text_chunks("Sure.")),
    )

    events = await collect(make_llm(server))

    assert events == [TextDelta(text="Sure.")]
    assert len(server.bodies) == 2


async def test_an_interrupted_reply_closes_the_connection(server: FakeOpenAI) -> None:
    server.script(hold(server, *text_chunks("One.", " Two.")[:2]), sse(*text_chunks("Next.")))
    llm = make_llm(server)

    stream = llm.chat(HELLO)
    assert isinstance(stream, AsyncGenerator)
    assert await anext(stream) == TextDelta(text="One.")
    await stream.aclose()  # barge-in
    async with asyncio.timeout(2):
        await server.hung_up.wait()
    # The client is still usable: the next reply goes through.
    assert [e async for e in llm.chat(HELLO)] == [TextDelta(text="Next.")]
    await llm.aclose()


# -- configuration -----------------------------------------------------------------------------


def test_a_missing_key_fails_at_construction_naming_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)

    with pytest.raises(ProviderError, match="set OPENAI_API_KEY"):
        OpenAILLM(OpenAILLMConfig(base_url="http://127.0.0.1:9/v1"))


async def test_the_key_comes_from_the_environment(
    server: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-env")
    server.script(sse(*text_chunks("Hi.")))

    await collect(OpenAILLM(OpenAILLMConfig(base_url=server.url, timeouts=PATIENT)))

    assert server.auth == ["Bearer sk-from-env"]


def test_from_options_builds_nested_timeouts_and_retry() -> None:
    config = OpenAILLMConfig.from_options(
        "llama3.1:8b",
        {
            "base_url": "http://127.0.0.1:11434/v1",
            "api_key": "ollama",
            "temperature": 0.2,
            "max_tokens": 300,
            "timeouts": {"first_byte_s": 2.5},
            "retry": {"attempts": 2},
        },
    )

    assert config.model == "llama3.1:8b"
    assert config.base_url == "http://127.0.0.1:11434/v1" and config.api_key == "ollama"
    assert config.temperature == 0.2 and config.max_tokens == 300
    assert config.timeouts == Timeouts(first_byte_s=2.5)
    assert config.retry == RetryPolicy(attempts=2)
    assert "ollama" not in repr(config)  # keys stay out of logs
    assert OpenAILLMConfig.from_options(None, {}) == OpenAILLMConfig()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"temprature": 0.2}, "openai llm: unknown option(s) 'temprature' (known: api_key, base_url"),
        ({"timeouts": {"first_byte": 1}}, "openai llm: unknown timeouts option(s) 'first_byte'"),
        ({"retry": 3}, "openai llm: option 'retry' must be a mapping, got int"),
        ({"model": "gpt-4o"}, "the model is set by the provider's `model`"),
        ({"temperature": 3.0}, "openai temperature must be 0-2, got 3.0"),
        ({"timeouts": {"total_s": 0}}, "timeout total_s must be > 0"),
    ],
)
def test_from_options_rejects_bad_options(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError) as err:
        OpenAILLMConfig.from_options(None, options)
    assert message in str(err.value)


async def test_warm_opens_the_connection_the_first_request_reuses(server: FakeOpenAI) -> None:
    server.script(sse(*text_chunks("Hi."), usage_chunk(5, 1)))
    llm = make_llm(server)
    await llm.warm()
    assert server.model_lists == 1
    events = await collect(llm)  # closes the client
    assert events[0] == TextDelta(text="Hi.")
    # One connection: the completion did not pay for a new TCP (and, in production, TLS) handshake.
    assert len(server.peers) == 2 and server.peers[0] == server.peers[1]


async def test_warm_never_fails_the_call(
    server: FakeOpenAI, captured_logs: list[MutableMapping[str, Any]]
) -> None:
    llm = OpenAILLM(OpenAILLMConfig(base_url="http://127.0.0.1:1/v1", api_key="sk-test", timeouts=SHORT))
    try:
        await llm.warm()  # nothing listens there: logged, not raised
    finally:
        await llm.aclose()
    assert [e["event"] for e in captured_logs] == ["provider_warm_failed"]


def test_idle_connections_outlive_a_callers_turn() -> None:
    # httpx's default closes a connection idle for 5 s: most turns would pay a new handshake.
    from pipeline.providers.openai_llm import KEEPALIVE_S, openai_client

    client = openai_client("http://127.0.0.1:1/v1", "sk-test", SHORT)
    pool = client._client._transport._pool  # type: ignore[attr-defined]  # private: the setting as httpx applies it
    assert pool._keepalive_expiry == KEEPALIVE_S >= 60
