"""Prometheus metrics: what a real scrape of /metrics shows after turns and usage are observed.

The registry is process-global and other tests feed it too, so every assertion is on the change
between a scrape before and a scrape after.
"""

from __future__ import annotations

import math
import threading
import uuid
from collections.abc import AsyncIterator

import aiohttp
import pytest
import pytest_asyncio
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from metering import _metrics
from metering._metrics import bound_port, observe_turn, observe_usage, serve_metrics

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]

SPEC_BUCKETS_S = (0.025, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10)
LATENCY = "voicerun_turn_latency_seconds"


@pytest_asyncio.fixture
async def base_url() -> AsyncIterator[str]:
    runner = await serve_metrics("127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{bound_port(runner)}"
    finally:
        await runner.cleanup()


@pytest_asyncio.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def scrape_text(http: aiohttp.ClientSession, base_url: str) -> str:
    async with http.get(f"{base_url}/metrics") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"] == CONTENT_TYPE_LATEST
        return await resp.text()


async def scrape(http: aiohttp.ClientSession, base_url: str) -> Samples:
    text = await scrape_text(http, base_url)
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def delta(before: Samples, after: Samples, name: str, **labels: str) -> float:
    key = (name, frozenset(labels.items()))
    return after.get(key, 0.0) - before.get(key, 0.0)


def bucket_deltas(before: Samples, after: Samples, stage: str) -> dict[float, float]:
    """le (as a number) -> how many observations of `stage` the bucket gained."""
    out: dict[float, float] = {}
    for (name, labels), value in after.items():
        label = dict(labels)
        if name == f"{LATENCY}_bucket" and label["stage"] == stage:
            out[float(label["le"])] = value - before.get((name, labels), 0.0)
    return out


# -- turns ---------------------------------------------------------------------------------------


async def test_each_turn_stage_lands_in_its_bucket_in_seconds(
    http: aiohttp.ClientSession, base_url: str
) -> None:
    before = await scrape(http, base_url)
    observe_turn(250, 180, 420, 95, 1200, interrupted=False)
    after = await scrape(http, base_url)

    observed_s = {"eou": 0.25, "stt": 0.18, "llm_ttft": 0.42, "tts_ttfb": 0.095, "e2e": 1.2}
    for stage, value_s in observed_s.items():
        expected = {le: 1.0 if value_s <= le else 0.0 for le in (*SPEC_BUCKETS_S, math.inf)}
        assert bucket_deltas(before, after, stage) == expected, stage
        assert delta(before, after, f"{LATENCY}_count", stage=stage) == 1, stage
        assert delta(before, after, f"{LATENCY}_sum", stage=stage) == pytest.approx(value_s), stage

    # 250 ms is on the 0.25 s boundary: counted there (le is inclusive), not one bucket lower.
    eou = bucket_deltas(before, after, "eou")
    assert (eou[0.2], eou[0.25]) == (0, 1)
    assert delta(before, after, "voicerun_turns_total", interrupted="false") == 1
    assert delta(before, after, "voicerun_turns_total", interrupted="true") == 0


async def test_stages_that_did_not_happen_are_not_observed(
    http: aiohttp.ClientSession, base_url: str
) -> None:
    before = await scrape(http, base_url)
    # 0 ms (a transcript already final at end of speech) happened; None did not.
    observe_turn(300, 0, None, None, None, interrupted=True)
    after = await scrape(http, base_url)

    assert delta(before, after, f"{LATENCY}_count", stage="eou") == 1
    assert delta(before, after, f"{LATENCY}_sum", stage="eou") == pytest.approx(0.3)
    assert delta(before, after, f"{LATENCY}_count", stage="stt") == 1
    assert delta(before, after, f"{LATENCY}_bucket", stage="stt", le="0.025") == 1
    for stage in ("llm_ttft", "tts_ttfb", "e2e"):
        assert delta(before, after, f"{LATENCY}_count", stage=stage) == 0, stage
        assert delta(before, after, f"{LATENCY}_sum", stage=stage) == 0, stage
        assert set(bucket_deltas(before, after, stage).values()) <= {0.0}, stage
    assert delta(before, after, "voicerun_turns_total", interrupted="true") == 1
    assert delta(before, after, "voicerun_turns_total", interrupted="false") == 0


async def test_latency_buckets_are_the_voice_latency_ones(http: aiohttp.ClientSession, base_url: str) -> None:
    observe_turn(100, 100, None, None, None, interrupted=False)  # so the eou series exists
    samples = await scrape(http, base_url)
    les = {
        float(dict(labels)["le"])
        for name, labels in samples
        if name == f"{LATENCY}_bucket" and dict(labels)["stage"] == "eou"
    }
    assert les == {*SPEC_BUCKETS_S, math.inf}


# -- provider usage ------------------------------------------------------------------------------


async def test_usage_is_counted_per_stage_under_its_labels(
    http: aiohttp.ClientSession, base_url: str
) -> None:
    # Providers of this test alone, so no other test's usage can move these series.
    stt, llm, tts = (f"{stage}-{uuid.uuid4().hex[:8]}" for stage in ("stt", "llm", "tts"))
    before = await scrape(http, base_url)
    observe_usage("stt", stt, None, audio_seconds=12.5, characters=99)
    observe_usage("llm", llm, "gpt-4o-mini", prompt_tokens=1200, completion_tokens=80, cached_tokens=1000)
    observe_usage("llm", llm, "gpt-4o-mini", prompt_tokens=300, completion_tokens=20)
    observe_usage("tts", tts, "aura-2", characters=57, audio_seconds=3.0)
    after = await scrape(http, base_url)

    assert delta(before, after, "voicerun_stt_audio_seconds_total", provider=stt, model="default") == 12.5
    llm_labels = {"provider": llm, "model": "gpt-4o-mini"}
    assert delta(before, after, "voicerun_llm_tokens_total", **llm_labels, kind="prompt") == 1500
    assert delta(before, after, "voicerun_llm_tokens_total", **llm_labels, kind="completion") == 100
    assert delta(before, after, "voicerun_llm_tokens_total", **llm_labels, kind="cached") == 1000
    assert delta(before, after, "voicerun_tts_characters_total", provider=tts, model="aura-2") == 57

    # Each stage counts only what it bills for, and a missing model is never the string "None".
    ours = {
        (name, labels): value - before.get((name, labels), 0.0)
        for (name, labels), value in after.items()
        if dict(labels).get("provider") in (stt, llm, tts) and name.endswith("_total")
    }
    assert sorted((name, dict(labels)["provider"]) for name, labels in ours) == sorted(
        [
            ("voicerun_llm_tokens_total", llm),
            ("voicerun_llm_tokens_total", llm),
            ("voicerun_llm_tokens_total", llm),
            ("voicerun_stt_audio_seconds_total", stt),
            ("voicerun_tts_characters_total", tts),
        ]
    )


def test_an_unknown_usage_stage_is_an_error() -> None:
    with pytest.raises(ValueError, match="'vad'"):
        observe_usage("vad", "webrtc", None, audio_seconds=1.0)


# -- the exposition --------------------------------------------------------------------------------


async def test_every_metric_is_exposed_with_its_type_and_help(
    http: aiohttp.ClientSession, base_url: str
) -> None:
    families = {f.name: f for f in text_string_to_metric_families(await scrape_text(http, base_url))}
    expected = {
        "voicerun_active_calls": "gauge",
        "voicerun_calls": "counter",
        "voicerun_turns": "counter",
        "voicerun_turn_latency_seconds": "histogram",
        "voicerun_stt_audio_seconds": "counter",
        "voicerun_llm_tokens": "counter",
        "voicerun_tts_characters": "counter",
        "voicerun_call_seconds": "counter",
        "voicerun_provider_fallbacks": "counter",
        "voicerun_metering_queue_depth": "gauge",
        "voicerun_metering_dropped": "counter",
        "voicerun_metering_write_seconds": "histogram",
        "voicerun_metering_write_failures": "counter",
        "voicerun_usage_export_backlog": "gauge",
        "voicerun_usage_export_delivered": "counter",
        "voicerun_usage_export_failures": "counter",
        "voicerun_usage_export_dead_letters": "gauge",
        "voicerun_usage_export_oldest_pending_seconds": "gauge",
    }
    assert {name: families[name].type for name in expected if name in families} == expected
    for name in expected:
        assert families[name].documentation.strip(), name


async def test_the_scrape_is_rendered_off_the_event_loop(
    http: aiohttp.ClientSession, base_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    threads: list[int] = []

    def spy(registry: Collector) -> bytes:
        threads.append(threading.get_ident())
        return generate_latest(registry)

    monkeypatch.setattr(_metrics, "generate_latest", spy)
    text = await scrape_text(http, base_url)

    assert "voicerun_active_calls" in text
    assert len(threads) == 1
    assert threads[0] != threading.get_ident()


async def test_healthz_answers_ok(http: aiohttp.ClientSession, base_url: str) -> None:
    async with http.get(f"{base_url}/healthz") as resp:
        assert resp.status == 200
        assert await resp.text() == "ok"


async def test_an_unknown_path_is_404(http: aiohttp.ClientSession, base_url: str) -> None:
    async with http.get(f"{base_url}/metrics/extra") as resp:
        assert resp.status == 404
    async with http.post(f"{base_url}/metrics") as resp:
        assert resp.status == 405


async def test_port_0_binds_a_free_port_and_a_taken_port_fails() -> None:
    runner = await serve_metrics("127.0.0.1", 0)
    try:
        port = bound_port(runner)
        assert port > 0
        with pytest.raises(OSError):
            await serve_metrics("127.0.0.1", port)
    finally:
        await runner.cleanup()
