"""The cost breakdown: exact decimal arithmetic, the catalog, operator overrides, the report."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from structlog.testing import capture_logs

import metering
from agent import _report
from agent._call import CallRecord
from metering import (
    CostBreakdown,
    PriceCatalog,
    PriceCatalogError,
    PriceNotFoundError,
    UsageLine,
    cost_breakdown,
    load_catalog,
    parse_catalog,
    seconds,
)
from pipeline import CallSummary, Usage

CATALOG = """
version: "2026-01-15"
currency: USD
stt:
  deepgram:
    nova-3: {per_minute: "0.0077"}
llm:
  openai:
    gpt-4o-mini: {input_per_1m_tokens: "0.15", cached_input_per_1m_tokens: "0.075", output_per_1m_tokens: 0.60}
tts:
  polly:
    neural: {per_1m_characters: 16}
telephony:
  twilio:
    "*": {per_minute: "0.0085"}
agent:
  voicerun:
    "*": {per_minute: "0.01"}
"""
USAGE = Usage(
    stt_audio_seconds=90.0,
    llm_prompt_tokens=12_345,
    llm_completion_tokens=678,
    llm_cached_tokens=2_000,
    tts_characters=1_234,
    call_seconds=300.0,
)
PAID = {"stt": ("deepgram", "nova-3"), "llm": ("openai", "gpt-4o-mini"), "tts": ("polly", "neural")}
SEED_KEYS = {"total", "voice", "transcriber", "language_model", "telephony", "agent"}
Who = tuple[str, str | None]


def lines(usage: Usage, *, stt: Who, llm: Who, tts: Who) -> list[UsageLine]:
    """A whole call's usage as one line per stage (a call with one provider per stage)."""
    return [
        UsageLine("stt", *stt, audio_seconds=seconds(usage.stt_audio_seconds)),
        UsageLine(
            "llm",
            *llm,
            prompt_tokens=usage.llm_prompt_tokens,
            completion_tokens=usage.llm_completion_tokens,
            cached_tokens=usage.llm_cached_tokens,
        ),
        UsageLine("tts", *tts, characters=usage.tts_characters),
    ]


def costs_of(
    usage: Usage,
    *,
    stt: Who,
    llm: Who,
    tts: Who,
    telephony: tuple[str, float] | None,
    catalog: PriceCatalog,
    strict: bool = False,
) -> CostBreakdown:
    return cost_breakdown(
        lines(usage, stt=stt, llm=llm, tts=tts),
        call_seconds=usage.call_seconds,
        telephony=telephony,
        catalog=catalog,
        strict=strict,
    )


def test_exact_decimal_arithmetic_against_hand_computed_values() -> None:
    costs = costs_of(USAGE, **PAID, telephony=("twilio", 300.0), catalog=parse_catalog(CATALOG))
    # stt: 1.5 min x 0.0077 = 0.01155
    assert costs["transcriber"] == {"provider": "deepgram", "cost": "0.011550", "seconds": 90.0}
    # llm: 10,345 x 0.15/1M + 2,000 x 0.075/1M + 678 x 0.60/1M = 0.00210855 -> 0.002109
    assert costs["language_model"] == {
        "provider": "openai", "cost": "0.002109", "input_tokens": 12_345, "output_tokens": 678,
    }  # fmt: skip
    # tts: 1,234 x 16/1M = 0.019744
    assert costs["voice"] == {"provider": "polly", "cost": "0.019744", "characters": 1_234}
    # telephony: 5 min x 0.0085 = 0.0425; agent: 5 min x 0.01 = 0.05
    assert costs["telephony"] == {"provider": "twilio", "cost": "0.042500", "seconds": 300.0}
    assert costs["agent"] == {"provider": "voicerun", "cost": "0.050000", "seconds": 300.0}
    assert costs["total"] == "0.125903"
    assert SEED_KEYS <= costs.keys() and costs["priced"] is True
    assert costs["catalog_version"] == "2026-01-15" and costs["currency"] == "USD"
    # the total is the exact sum of the stage costs shown
    stages = ("transcriber", "language_model", "voice", "telephony", "agent")
    assert sum(Decimal(costs[s]["cost"]) for s in stages) == Decimal(costs["total"])  # type: ignore[index]


def test_float_prices_are_read_through_their_text() -> None:
    price = parse_catalog(CATALOG).price("llm", "openai", "gpt-4o-mini")
    assert price is not None and price.output_per_1m_tokens == Decimal("0.6")  # type: ignore[union-attr]


def test_offline_providers_cost_nothing_in_the_default_catalog() -> None:
    costs = costs_of(
        USAGE, stt=("whisper", None), llm=("rules", None), tts=("hibari", None), telephony=None,
        catalog=load_catalog(),
    )  # fmt: skip
    assert costs["total"] == "0.000000" and costs["priced"] is True and costs["telephony"] is None


def test_default_catalog_prices_the_documented_providers() -> None:
    catalog = load_catalog()
    assert catalog.currency == "USD" and catalog.version
    for stage, provider, model in [
        ("stt", "deepgram", "nova-3"), ("stt", "deepgram", None),
        ("llm", "openai", "gpt-4o-mini"), ("llm", "openai", "gpt-4o"), ("llm", "openai", None),
        ("tts", "openai", "gpt-4o-mini-tts"), ("tts", "polly", "standard"), ("tts", "polly", "neural"),
        ("tts", "polly", "generative"), ("tts", "deepgram", "aura-2-thalia-en"),
        ("agent", "voicerun", None),
    ]:  # fmt: skip
        assert catalog.price(stage, provider, model) is not None, (stage, provider, model)
    llm = catalog.price("llm", "openai", "gpt-4o")
    assert llm is not None and llm.cached_input_per_1m_tokens < llm.input_per_1m_tokens  # type: ignore[union-attr]
    # the longest matching pattern wins: Aura 2 is not priced as Aura 1
    assert catalog.price("tts", "deepgram", "aura-2-andromeda-en") == catalog.price(
        "tts", "deepgram", "aura-2-x"
    )
    assert catalog.price("tts", "deepgram", "aura-2-x") != catalog.price("tts", "deepgram", "aura-asteria-en")


def test_operator_override_replaces_one_model_and_keeps_the_rest(tmp_path: Path) -> None:
    default = load_catalog()
    ours = tmp_path / "prices.yaml"
    ours.write_text(
        'version: "2026-12-01"\n'
        "llm:\n  openai:\n    gpt-4o:\n"
        '      {input_per_1m_tokens: "2.00", cached_input_per_1m_tokens: "0.50", output_per_1m_tokens: "8.00"}\n'
        "telephony:\n  sip-trunk:\n    '*': {per_minute: '0.004'}\n"
    )
    catalog = load_catalog(ours)
    assert catalog.version == "2026-12-01"
    gpt4o = catalog.price("llm", "openai", "gpt-4o")
    assert gpt4o is not None and gpt4o.input_per_1m_tokens == Decimal("2.00")  # type: ignore[union-attr]
    assert catalog.price("llm", "openai", "gpt-4o-mini") == default.price("llm", "openai", "gpt-4o-mini")
    assert catalog.price("tts", "polly", "neural") == default.price("tts", "polly", "neural")
    assert catalog.price("telephony", "twilio", None) == default.price("telephony", "twilio", None)
    assert catalog.price("telephony", "sip-trunk", None) is not None


def test_unknown_provider_is_an_error_when_strict() -> None:
    with pytest.raises(PriceNotFoundError, match=r"no llm price for provider 'acme' model 'big-1'"):
        costs_of(
            USAGE,
            **{**PAID, "llm": ("acme", "big-1")},
            telephony=None,
            catalog=parse_catalog(CATALOG),
            strict=True,
        )


def test_unknown_model_is_unpriced_and_flagged_otherwise() -> None:
    with capture_logs() as logs:
        costs = costs_of(
            USAGE, **{**PAID, "stt": ("deepgram", "nova-9")}, telephony=None, catalog=parse_catalog(CATALOG)
        )
    assert costs["priced"] is False
    assert costs["transcriber"] == {
        "provider": "deepgram",
        "cost": "0.000000",
        "seconds": 90.0,
        "priced": False,
    }
    assert "priced" not in costs["voice"]  # type: ignore[operator]
    assert costs["total"] == "0.071853"  # 0 + 0.002109 + 0.019744 + 0.05
    assert [(e["event"], e["provider"], e["model"]) for e in logs] == [
        ("price_missing", "deepgram", "nova-9")
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("version: '2026-12-01'\nllm: [oops", r"prices\.yaml:\d+:\d+: YAML"),
        ("tts:\n  polly:\n    neural: {per_1m_characters: 'cheap'}\n", r"prices\.yaml: tts\.polly\.neural\.per_1m_characters: .*not a decimal"),
        ("tts:\n  polly:\n    neural: {per_minute: 1}\n", r"prices\.yaml: .*tts\.polly\.neural\.per_minute: Extra inputs"),
        ("stt:\n  deepgram:\n    nova-3: {per_minute: -1}\n", r"stt\.deepgram\.nova-3\.per_minute: .*not negative"),
        ("currency: EUR\n", r"prices\.yaml: currency:"),
        ("- a list\n", r"prices\.yaml: a price catalog is a mapping"),
    ],
)  # fmt: skip
def test_malformed_operator_catalog_names_the_file_and_the_key(
    tmp_path: Path, text: str, expected: str
) -> None:
    path = tmp_path / "prices.yaml"
    path.write_text(text)
    with pytest.raises(PriceCatalogError, match=expected) as info:
        load_catalog(path)
    assert str(path) in str(info.value)


def test_missing_operator_file_names_it(tmp_path: Path) -> None:
    with pytest.raises(PriceCatalogError, match=r"nope\.yaml: cannot read"):
        load_catalog(tmp_path / "nope.yaml")


def test_an_operator_file_that_is_a_fifo_or_endless_is_refused(tmp_path: Path) -> None:
    import os

    os.mkfifo(tmp_path / "prices.yaml")
    with pytest.raises(PriceCatalogError, match=r"prices\.yaml: the price catalog is not a regular file"):
        load_catalog(tmp_path / "prices.yaml")
    big = tmp_path / "big.yaml"
    big.write_text("# " + "x" * 2_000_000 + "\n")
    with pytest.raises(PriceCatalogError, match=r"big\.yaml: the price catalog is over 1048576 bytes"):
        load_catalog(big)


def test_exports() -> None:
    assert all(hasattr(metering, name) for name in metering.__all__)
    assert {"cost_breakdown", "load_catalog", "PriceCatalog", "PriceCatalogError"} <= set(metering.__all__)


def test_report_has_the_cost_breakdown(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    prices = tmp_path / "prices.yaml"
    prices.write_text(CATALOG)
    monkeypatch.setenv("VOICERUN_PRICES", str(prices))
    _report.price_catalog.cache_clear()
    try:
        record = CallRecord(
            "c1", "demo", datetime(2026, 2, 3, 9, 0, tzinfo=UTC), ["host"], usage_lines=lines(USAGE, **PAID)
        )
        record.summary = CallSummary("agent_ended", 300.0, USAGE, ())
        report = json.loads(json.dumps(_report.report_dict(record)))
    finally:
        _report.price_catalog.cache_clear()
    costs = report["cost_breakdown"]
    assert SEED_KEYS <= costs.keys() and costs["telephony"] is None
    assert costs["total"] == "0.083403"  # 0.011550 + 0.002109 + 0.019744 + 0.05
    assert costs["catalog_version"] == "2026-01-15"


@given(
    stt_s=st.floats(0, 86_400),
    prompt=st.integers(0, 10**8),
    cached=st.integers(0, 10**8),
    completion=st.integers(0, 10**7),
    chars=st.integers(0, 10**7),
    call_s=st.floats(0, 86_400),
)
def test_total_is_the_exact_sum_of_the_stages(
    stt_s: float, prompt: int, cached: int, completion: int, chars: int, call_s: float
) -> None:
    usage = Usage(stt_s, prompt, completion, min(cached, prompt), chars, call_s)
    costs = costs_of(usage, **PAID, telephony=("twilio", call_s), catalog=parse_catalog(CATALOG))
    stages = [
        Decimal(costs[s]["cost"]) for s in ("transcriber", "language_model", "voice", "telephony", "agent")
    ]  # type: ignore[index]
    assert all(c >= 0 and c == c.quantize(Decimal("0.000001")) for c in stages)
    assert sum(stages) == Decimal(costs["total"])  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({"provider": "polly", "options": {"engine": "standard"}}, ("polly", "standard")),
        ({"provider": "polly", "model": "generative"}, ("polly", "generative")),
        ({"provider": "deepgram"}, ("deepgram", None)),
    ],
)
def test_the_call_records_what_it_is_priced_as(
    spec: dict[str, object], expected: tuple[str, str | None]
) -> None:
    from agent._call import _priced
    from workflows import ProviderSpec

    assert _priced(ProviderSpec.model_validate(spec)) == expected


def test_an_unlisted_model_of_a_paid_provider_is_not_priced_as_its_default() -> None:
    catalog = load_catalog()
    assert catalog.price("llm", "openai", None) == catalog.price("llm", "openai", "gpt-4o-mini")
    assert catalog.price("llm", "openai", "gpt-9-ultra") is None
    assert catalog.price("llm", "openai", "gpt-4o-mini-2024-07-18") == catalog.price(
        "llm", "openai", "gpt-4o-mini"
    )
    assert catalog.price("stt", "whisper", "large-v3") == catalog.price("stt", "whisper", None)


def test_a_stage_served_by_two_providers_lists_each_and_is_named_by_the_costlier() -> None:
    # A handoff to an agent on another voice, or a fallback: each provider priced as itself.
    catalog = parse_catalog(CATALOG)
    costs = cost_breakdown(
        [
            UsageLine("tts", "hibari", None, characters=500),
            UsageLine("tts", "polly", "neural", characters=1_000),
            UsageLine("tts", "hibari", None, characters=100),
            UsageLine("stt", "deepgram", "nova-3", audio_seconds=Decimal("30")),
        ],
        call_seconds=60,
        telephony=None,
        catalog=catalog,
    )
    voice = costs["voice"]
    assert isinstance(voice, dict)
    assert voice["provider"] == "polly" and voice["characters"] == 1_600
    assert voice["cost"] == "0.016000" and voice["priced"] is False  # hibari is not in this catalog
    assert voice["providers"] == [
        {"provider": "hibari", "model": None, "cost": "0.000000", "characters": 600},
        {"provider": "polly", "model": "neural", "cost": "0.016000", "characters": 1_000},
    ]
    assert "providers" not in costs["transcriber"]  # type: ignore[operator]
    # A stage nothing used names no provider and costs nothing.
    assert costs["language_model"] == {
        "provider": None,
        "cost": "0.000000",
        "input_tokens": 0,
        "output_tokens": 0,
    }
    assert costs["total"] == "0.029850"  # 0.016 + 0.00385 (0.5 min of nova-3) + 0.01 agent


def test_the_call_prices_usage_by_the_agent_that_used_it() -> None:
    from agent._call import _pricing
    from workflows import load_workflow_text

    wf = load_workflow_text(
        """
version: 1
slug: two-voices
start: front
defaults: {stt: whisper, llm: rules, tts: hibari}
agents:
  front:
    instructions: Greet.
    handoffs: [{to: billing, description: Billing questions}]
  billing:
    instructions: Bill.
    tts: [{provider: polly, options: {engine: neural}}, hibari]
"""
    )
    pricing = _pricing(wf)
    assert pricing["front"]["tts"] == [("hibari", None)]
    assert pricing["billing"]["tts"] == [("polly", "neural"), ("hibari", None)]
    assert pricing["billing"]["stt"] == [("whisper", None)]
