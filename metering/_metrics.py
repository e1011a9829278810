"""Prometheus metrics of calls, turns, provider usage, the metering writer and the usage export.

Every metric lives on prometheus_client's default `REGISTRY`, so one scrape of `/metrics` sees
the whole process. Latencies are exported in seconds (Prometheus' base unit) although the
pipeline measures them in milliseconds: `observe_turn` converts.
"""

from __future__ import annotations

import asyncio

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Counter, Gauge, Histogram, generate_latest

__all__ = [
    "ACTIVE_CALLS",
    "CALLS",
    "CALL_SECONDS",
    "EXPORT_BACKLOG",
    "EXPORT_DEAD_LETTERS",
    "EXPORT_DELIVERED",
    "EXPORT_FAILURES",
    "EXPORT_IN_DOUBT",
    "LLM_TOKENS",
    "METERING_DROPPED",
    "METERING_QUEUE_DEPTH",
    "METERING_WRITE_FAILURES",
    "METERING_WRITE_SECONDS",
    "PROVIDER_FALLBACKS",
    "STT_AUDIO_SECONDS",
    "TTS_CHARACTERS",
    "TURNS",
    "TURN_LATENCY",
    "TURN_LATENCY_BUCKETS_S",
    "bound_port",
    "metrics_app",
    "metrics_handler",
    "observe_turn",
    "observe_usage",
    "serve_metrics",
]

# -- calls and turns ---------------------------------------------------------------------------

ACTIVE_CALLS = Gauge("voicerun_active_calls", "Calls in progress in this process (opened, not yet closed).")
CALLS = Counter(
    "voicerun_calls",
    "Calls closed, by final status (completed, failed, disconnected, timeout, no_answer, busy, abandoned).",
    ["status"],
)
CALL_SECONDS = Counter(
    "voicerun_call_seconds",
    "Duration of closed calls in seconds; the platform bills per call minute.",
)
TURNS = Counter(
    "voicerun_turns",
    "Agent turns, by whether the caller interrupted the reply (true, false).",
    ["interrupted"],
)

TURN_LATENCY_BUCKETS_S = (0.025, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10)
"""Dense from 100 ms to 500 ms, where a voice agent starts to feel slow to a caller."""

TURN_LATENCY = Histogram(
    "voicerun_turn_latency_seconds",
    "Per-turn latency in seconds, by stage: eou (end of speech to turn committed), stt (to final "
    "transcript), llm_ttft (to first LLM text), tts_ttfb (to first TTS audio), e2e (silence the "
    "caller hears).",
    ["stage"],
    buckets=TURN_LATENCY_BUCKETS_S,
)

# -- provider usage (what the providers bill us for) -------------------------------------------

STT_AUDIO_SECONDS = Counter(
    "voicerun_stt_audio_seconds",
    "Caller audio sent to speech-to-text in seconds, by provider and model; STT bills per minute.",
    ["provider", "model"],
)
LLM_TOKENS = Counter(
    "voicerun_llm_tokens",
    "LLM tokens by provider, model and kind: prompt (all prompt tokens, cached included), "
    "completion, cached (the prompt tokens served from the provider's cache, billed lower).",
    ["provider", "model", "kind"],
)
TTS_CHARACTERS = Counter(
    "voicerun_tts_characters",
    "Characters sent to text-to-speech, by provider and model; TTS bills per character.",
    ["provider", "model"],
)
PROVIDER_FALLBACKS = Counter(
    "voicerun_provider_fallbacks",
    "Switches from a failing provider to the next one of its fallback chain, by stage (stt, llm, tts).",
    ["stage"],
)

# -- the metering writer -----------------------------------------------------------------------

METERING_QUEUE_DEPTH = Gauge(
    "voicerun_metering_queue_depth",
    "Usage records waiting in the bounded queue for the ledger writer.",
)
METERING_DROPPED = Counter(
    "voicerun_metering_dropped",
    "Records the full metering queue could not hold and that were lost, by record kind.",
    ["kind"],
)
METERING_WRITE_SECONDS = Histogram(
    "voicerun_metering_write_seconds",
    "Duration in seconds of one batched ledger transaction (successful writes only).",
)
METERING_WRITE_FAILURES = Counter(
    "voicerun_metering_write_failures",
    "Failed ledger transactions; each failed batch is retried, so usage is not lost.",
)

# -- the usage export to the billing API -------------------------------------------------------

EXPORT_BACKLOG = Gauge(
    "voicerun_usage_export_backlog",
    "Outbox events not yet delivered to the usage API (pending or awaiting retry).",
)
EXPORT_DELIVERED = Counter(
    "voicerun_usage_export_delivered",
    "Outbox events the usage API accepted (2xx or 409), by step (customer, session, stt, ...).",
    ["step"],
)
EXPORT_FAILURES = Counter(
    "voicerun_usage_export_failures",
    "Failed delivery attempts to the usage API, by reason (http_503, timeout, connection, ...).",
    ["reason"],
)
EXPORT_DEAD_LETTERS = Gauge(
    "voicerun_usage_export_dead_letters",
    "Outbox events given up on; each blocks its call's later events until re-queued.",
)
EXPORT_IN_DOUBT = Gauge(
    "voicerun_usage_export_in_doubt",
    "Outbox events sent without an answer to an API that ignores Idempotency-Key: an operator "
    "decides (voicerun metering doubt); each blocks its call's later events.",
)
EXPORT_OLDEST_PENDING = Gauge(
    "voicerun_usage_export_oldest_pending_seconds",
    "Age of the oldest outbox event not yet delivered, s (0: none): how late billing is running.",
)


def observe_turn(
    eou_ms: float,
    stt_ms: float,
    llm_ttft_ms: float | None,
    tts_ttfb_ms: float | None,
    e2e_ms: float | None,
    interrupted: bool,
) -> None:
    """Record one turn's latencies, given in milliseconds; a None stage did not happen."""
    stages = (
        ("eou", eou_ms),
        ("stt", stt_ms),
        ("llm_ttft", llm_ttft_ms),
        ("tts_ttfb", tts_ttfb_ms),
        ("e2e", e2e_ms),
    )
    for stage, ms in stages:
        if ms is not None:
            TURN_LATENCY.labels(stage=stage).observe(ms / 1000)
    TURNS.labels(interrupted="true" if interrupted else "false").inc()


def observe_usage(
    stage: str,
    provider: str,
    model: str | None,
    *,
    audio_seconds: float = 0.0,
    prompt_tokens: int = 0,
    completion_tokens: int = 0,
    cached_tokens: int = 0,
    characters: int = 0,
) -> None:
    """Count what one provider/model did at `stage` ("stt", "llm" or "tts"); only the quantities
    that stage bills for are counted. A model of None is the label "default", as in the price
    catalog."""
    label = model if model is not None else "default"
    if stage == "stt":
        STT_AUDIO_SECONDS.labels(provider=provider, model=label).inc(audio_seconds)
    elif stage == "llm":
        LLM_TOKENS.labels(provider=provider, model=label, kind="prompt").inc(prompt_tokens)
        LLM_TOKENS.labels(provider=provider, model=label, kind="completion").inc(completion_tokens)
        LLM_TOKENS.labels(provider=provider, model=label, kind="cached").inc(cached_tokens)
    elif stage == "tts":
        TTS_CHARACTERS.labels(provider=provider, model=label).inc(characters)
    else:
        raise ValueError(f"usage stage {stage!r} is not one of stt, llm, tts")


# -- exposition --------------------------------------------------------------------------------


async def metrics_handler(request: web.Request) -> web.Response:
    """GET /metrics: the default registry in the Prometheus text format."""
    # Rendering takes the registry's locks and grows with the number of series: keep it off the loop.
    body = await asyncio.to_thread(generate_latest, REGISTRY)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def _healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok")


def metrics_app() -> web.Application:
    """An app serving GET /metrics and GET /healthz; every other path is a 404."""
    app = web.Application()
    app.router.add_get("/metrics", metrics_handler)
    app.router.add_get("/healthz", _healthz)
    return app


async def serve_metrics(host: str, port: int) -> web.AppRunner:
    """Serve `metrics_app()` on host:port (0 picks a free port, see `bound_port`) until the caller
    runs `await runner.cleanup()`."""
    runner = web.AppRunner(metrics_app())
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except BaseException:
        # A taken port or a bad host: release the runner, which the caller never receives.
        await runner.cleanup()
        raise
    return runner


def bound_port(runner: web.AppRunner) -> int:
    """The port the runner's first site listens on (the real one when started with port 0)."""
    addresses = runner.addresses
    if not addresses:
        raise RuntimeError("metrics server is not listening")
    port = addresses[0][1]
    assert isinstance(port, int), addresses
    return port
