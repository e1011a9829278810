"""OpenAI chat completions, streamed: OpenAI itself or any compatible server through base_url
(vLLM, Ollama, llama.cpp server, Groq).

The openai package (~0.3-1.4 s to import) is imported when a provider is built, not with this
module, so `pipeline.providers` stays cheap to import. The SDK's own retries are off
(max_retries=0): stream_with_retries owns retrying, and SDK errors are mapped to ProviderError
here, once.

Tool calls arrive as deltas keyed by index (id and name in the first, arguments in pieces); each
is yielded whole, after the stream ends. Arguments that are not a JSON object raise a
non-retryable ProviderError rather than running a tool with guessed arguments.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Mapping, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

import structlog

from .._errors import ProviderError
from .._llm import LLM, LLMEvent, LLMUsage, Message, TextDelta, ToolCall, ToolCallRequest, ToolSpec
from ._options import config_kwargs
from ._resilience import RetryPolicy, Timeouts, stream_with_retries

if TYPE_CHECKING:
    from openai import AsyncOpenAI
    from openai.types.chat import (
        ChatCompletionChunk,
        ChatCompletionMessageParam,
        ChatCompletionToolParam,
    )
    from openai.types.chat.chat_completion_chunk import ChoiceDeltaToolCall
    from openai.types.completion_usage import CompletionUsage

__all__ = ["OpenAILLM", "OpenAILLMConfig"]

PROVIDER = "openai"
API_KEY_ENV = "OPENAI_API_KEY"
_OPENAI_HOST = "api.openai.com"
# Statuses the SDK itself would retry: request timeout, lock conflict, rate limit, server errors.
_RETRYABLE_STATUS = frozenset({408, 409, 429})

log = structlog.get_logger("voicerun.pipeline.openai")


@dataclass(frozen=True, slots=True)
class OpenAILLMConfig:
    model: str = "gpt-4o-mini"
    base_url: str | None = None
    """None: the SDK's default, OPENAI_BASE_URL if set, else https://api.openai.com/v1."""
    api_key: str | None = field(default=None, repr=False)
    """None: OPENAI_API_KEY. Servers that ignore keys (Ollama, vLLM) still need a non-empty one."""
    temperature: float | None = None
    """None: not sent (the server's default; reasoning models reject the field)."""
    max_tokens: int | None = None
    """None: not sent. Sent as max_completion_tokens to api.openai.com, max_tokens elsewhere."""
    timeouts: Timeouts = field(default_factory=Timeouts)
    retry: RetryPolicy = field(default_factory=RetryPolicy)

    def __post_init__(self) -> None:
        if not self.model:
            raise ValueError("openai model must not be empty")
        if self.temperature is not None and not 0.0 <= self.temperature <= 2.0:
            raise ValueError(f"openai temperature must be 0-2, got {self.temperature}")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise ValueError(f"openai max_tokens must be >= 1, got {self.max_tokens}")

    @classmethod
    def from_options(cls, model: str | None, options: Mapping[str, Any]) -> OpenAILLMConfig:
        """A workflow's provider spec -> config. `timeouts` and `retry` are nested mappings of
        Timeouts / RetryPolicy fields; unknown keys raise ValueError naming them."""
        kwargs = config_kwargs("openai llm", cls, options)
        if model is not None:
            kwargs["model"] = model
        try:
            return cls(**kwargs)
        except TypeError as exc:
            raise ValueError(f"openai llm options: {exc}") from exc


class OpenAILLM(LLM):
    name = PROVIDER

    def __init__(self, config: OpenAILLMConfig | None = None) -> None:
        self.config = config if config is not None else OpenAILLMConfig()
        self.model = self.config.model
        self._client = openai_client(self.config.base_url, self.config.api_key, self.config.timeouts)
        # api.openai.com wants max_completion_tokens (reasoning models reject max_tokens);
        # compatible servers all accept max_tokens, not all the newer name.
        self._max_tokens_field = (
            "max_completion_tokens" if self._client.base_url.host == _OPENAI_HOST else "max_tokens"
        )

    async def chat(
        self, messages: Sequence[Message], tools: Sequence[ToolSpec] = ()
    ) -> AsyncIterator[LLMEvent]:
        """Text deltas as they stream, then the complete tool calls (in index order), then usage."""
        request = _Request(
            messages=[_message_param(m) for m in messages],
            tools=[_tool_param(t) for t in tools],
        )
        started = time.perf_counter()
        log.info("llm_request", provider=PROVIDER, model=self.model, messages=len(messages), tools=len(tools))
        ttft_ms: int | None = None
        usage: LLMUsage | None = None
        partial: dict[int, _PartialCall] = {}
        finished = False
        # stream_with_retries is an async generator (typed as an iterator): close it explicitly.
        chunks = cast(
            "AsyncGenerator[ChatCompletionChunk, None]",
            stream_with_retries(
                lambda: self._chunks(request),
                provider=PROVIDER,
                timeouts=self.config.timeouts,
                retry=self.config.retry,
            ),
        )
        # aclosing: an interrupted reply (barge-in) closes the HTTP response now, not at GC.
        async with aclosing(chunks):
            async for chunk in chunks:
                if chunk.usage is not None:
                    usage = _usage(chunk.usage)
                    finished = True
                for choice in chunk.choices:
                    if choice.index != 0:
                        continue
                    finished = finished or choice.finish_reason is not None
                    for delta in choice.delta.tool_calls or ():
                        partial.setdefault(delta.index, _PartialCall()).add(delta)
                    if choice.delta.content:
                        if ttft_ms is None:
                            ttft_ms = _ms_since(started)
                        yield TextDelta(text=choice.delta.content)
        if not finished:
            # The SDK ends a stream that closes without [DONE] as if it were complete; a finish
            # reason or the usage chunk (requested, and sent last) is what says the reply is whole.
            raise ProviderError(
                "openai: the stream ended before the reply finished (no finish reason, no usage)",
                provider=PROVIDER,
                retryable=True,
            )
        calls = [partial[index].complete() for index in sorted(partial)]  # all valid before any runs
        for call in calls:
            if ttft_ms is None:
                ttft_ms = _ms_since(started)
            yield ToolCallRequest(call=call)
        if usage is not None:
            yield usage
        log.info(
            "llm_done",
            provider=PROVIDER,
            model=self.model,
            ttft_ms=ttft_ms,
            total_ms=_ms_since(started),
            tool_calls=len(calls),
            prompt_tokens=usage.prompt_tokens if usage else None,
            completion_tokens=usage.completion_tokens if usage else None,
            cached_tokens=usage.cached_tokens if usage else None,
        )

    async def _chunks(self, request: _Request) -> AsyncIterator[ChatCompletionChunk]:
        """One attempt: the raw chunks, SDK errors mapped to ProviderError."""
        import openai

        extra: dict[str, Any] = {}
        if self.config.max_tokens is not None:
            extra[self._max_tokens_field] = self.config.max_tokens
        try:
            stream = await self._client.chat.completions.create(
                model=self.model,
                messages=request.messages,
                tools=request.tools if request.tools else openai.omit,
                temperature=self.config.temperature if self.config.temperature is not None else openai.omit,
                stream=True,
                stream_options={"include_usage": True},
                extra_body=extra or None,
            )
            try:
                async for chunk in stream:
                    yield chunk
            finally:
                await stream.close()
        except json.JSONDecodeError as exc:
            raise ProviderError(
                f"openai: malformed stream frame (not JSON: {exc.msg} at char {exc.pos}): {exc.doc[:120]!r}",
                provider=PROVIDER,
            ) from exc
        except openai.OpenAIError as exc:
            raise map_openai_error(exc) from exc

    async def warm(self) -> None:
        await warm_connection(self._client, self.config.timeouts)

    async def aclose(self) -> None:
        await self._client.close()


# -- request conversion ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Request:
    messages: list[ChatCompletionMessageParam]
    tools: list[ChatCompletionToolParam]


def _message_param(m: Message) -> ChatCompletionMessageParam:
    match m.role:
        case "system":
            return {"role": "system", "content": m.content}
        case "user":
            return {"role": "user", "content": m.content}
        case "assistant":
            if not m.tool_calls:
                return {"role": "assistant", "content": m.content}
            return {
                "role": "assistant",
                "content": m.content or None,
                "tool_calls": [
                    {
                        "id": call.id,
                        "type": "function",
                        "function": {"name": call.name, "arguments": json.dumps(dict(call.arguments))},
                    }
                    for call in m.tool_calls
                ],
            }
        case "tool":
            if m.tool_call_id is None:
                raise ValueError(f"a tool message needs tool_call_id (content {m.content[:60]!r})")
            return {"role": "tool", "tool_call_id": m.tool_call_id, "content": m.content}
        case _:
            raise ValueError(f"unknown message role {m.role!r}")


def _tool_param(t: ToolSpec) -> ChatCompletionToolParam:
    return {
        "type": "function",
        "function": {"name": t.name, "description": t.description, "parameters": dict(t.parameters)},
    }


# -- response assembly -------------------------------------------------------------------------


@dataclass(slots=True)
class _PartialCall:
    id: str = ""
    name: str = ""
    arguments: list[str] = field(default_factory=list)

    def add(self, delta: ChoiceDeltaToolCall) -> None:
        # id and name come whole in the first delta; some compatible servers repeat them in every
        # delta, so the first one wins. Arguments come in pieces.
        if delta.id and not self.id:
            self.id = delta.id
        if delta.function is not None:
            if delta.function.name and not self.name:
                self.name = delta.function.name
            if delta.function.arguments:
                self.arguments.append(delta.function.arguments)

    def complete(self) -> ToolCall:
        if not self.name:
            raise ProviderError("openai: a streamed tool call has no function name", provider=PROVIDER)
        raw = "".join(self.arguments)
        try:
            arguments = json.loads(raw) if raw.strip() else {}
        except json.JSONDecodeError as exc:
            raise ProviderError(
                f"openai: tool call {self.name!r} has invalid JSON arguments: {raw[:200]!r} ({exc.msg})",
                provider=PROVIDER,
            ) from exc
        if not isinstance(arguments, dict):
            raise ProviderError(
                f"openai: tool call {self.name!r} arguments are not a JSON object: {raw[:200]!r}",
                provider=PROVIDER,
            )
        # Some compatible servers omit the id; the tool result still needs one to refer to.
        return ToolCall(id=self.id or f"call_{uuid.uuid4().hex[:24]}", name=self.name, arguments=arguments)


def _usage(u: CompletionUsage) -> LLMUsage:
    details = u.prompt_tokens_details
    cached = details.cached_tokens if details is not None and details.cached_tokens else 0
    return LLMUsage(
        prompt_tokens=u.prompt_tokens, completion_tokens=u.completion_tokens, cached_tokens=cached
    )


def _ms_since(started: float) -> int:
    return round((time.perf_counter() - started) * 1000)


# -- shared with openai_tts --------------------------------------------------------------------


def openai_client(base_url: str | None, api_key: str | None, timeouts: Timeouts) -> AsyncOpenAI:
    """An SDK client with its retries off and httpx timeouts from Timeouts.

    connect/write/pool bound opening the connection and sending the request; read bounds every
    wait for bytes, so a stream that stalls mid-way fails after first_byte_s too.
    """
    key = api_key if api_key is not None else os.environ.get(API_KEY_ENV)
    if not key:
        raise ProviderError(
            f"openai: no API key: set {API_KEY_ENV} or the api_key option "
            "(any non-empty string for servers that ignore it, such as Ollama)",
            provider=PROVIDER,
        )
    try:
        import openai
    except ImportError as exc:
        raise ProviderError(
            "openai needs the openai package; it is not installed", provider=PROVIDER
        ) from exc
    timeout = openai.Timeout(
        timeouts.total_s,
        connect=timeouts.connect_s,
        read=timeouts.first_byte_s,
        write=timeouts.connect_s,
        pool=timeouts.connect_s,
    )
    # httpx closes a connection idle for 5 s, shorter than a caller's turn: every LLM request
    # would pay a new TCP and TLS handshake. Keep them for 90 s (servers keep theirs about 60 to 120 s).
    import httpx2  # the SDK's own transport (openai 3.x)

    limits = httpx2.Limits(max_connections=1000, max_keepalive_connections=100, keepalive_expiry=KEEPALIVE_S)
    http = openai.DefaultAsyncHttpxClient(timeout=timeout, limits=limits)
    return openai.AsyncOpenAI(
        base_url=base_url, api_key=key, max_retries=0, timeout=timeout, http_client=http
    )


KEEPALIVE_S = 90.0


async def warm_connection(client: AsyncOpenAI, timeouts: Timeouts) -> None:
    """Open (and keep) a connection with a request that costs nothing, GET /models, so the
    first real request does not pay the handshakes. Best effort: a failure is logged only."""
    started = time.perf_counter()
    try:
        async with asyncio.timeout(timeouts.connect_s + timeouts.first_byte_s):
            await client.models.list()
    except Exception as exc:  # any answer, even an error, has opened the connection
        log.debug("provider_warm_failed", provider=PROVIDER, error=f"{type(exc).__name__}: {exc}")
        return
    log.debug("provider_warmed", provider=PROVIDER, ms=round((time.perf_counter() - started) * 1000, 1))


def map_openai_error(exc: Exception) -> ProviderError:
    """An openai SDK (or httpx2 transport) error -> ProviderError, retryable when transient."""
    import httpx2
    import openai

    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        return ProviderError(
            f"openai returned {status}: {_server_message(exc)}",
            provider=PROVIDER,
            retryable=status in _RETRYABLE_STATUS or status >= 500,
        )
    if isinstance(exc, openai.APITimeoutError | httpx2.TimeoutException):
        return ProviderError("openai: request timed out", provider=PROVIDER, retryable=True)
    if isinstance(exc, openai.APIConnectionError | httpx2.TransportError):
        cause = exc.__cause__ if isinstance(exc, openai.APIConnectionError) and exc.__cause__ else exc
        return ProviderError(
            f"openai: connection failed: {type(cause).__name__}: {cause}", provider=PROVIDER, retryable=True
        )
    if isinstance(exc, openai.APIResponseValidationError):
        return ProviderError(f"openai: unexpected response: {exc.message}", provider=PROVIDER)
    if isinstance(exc, openai.APIError):
        # An error event inside a 200 stream (the server failed while generating): transient, and
        # stream_with_retries only retries it if nothing has been yielded yet.
        return ProviderError(f"openai: stream error: {exc.message}", provider=PROVIDER, retryable=True)
    return ProviderError(f"openai: {type(exc).__name__}: {exc}", provider=PROVIDER)


def _server_message(exc: Any) -> str:
    body = exc.body
    if isinstance(body, Mapping) and isinstance(body.get("message"), str):
        return str(body["message"])
    if isinstance(body, str) and body:
        return body[:200]
    return str(exc.message)
