"""A call's cost_breakdown (the shape of the conversations API): usage priced from a catalog.

Money is computed in Decimal and emitted as decimal strings with 6 places ("0.011550"):
JSON numbers would pass through binary floats, and a bill must add up exactly. Each stage's
cost is rounded half-even to 6 places, and `total` is the sum of the rounded stage costs.
"""

from __future__ import annotations

from decimal import ROUND_HALF_EVEN, Decimal
from typing import TypeVar

import structlog

from pipeline import Usage

from ._errors import PriceNotFoundError
from ._prices import LLMPrice, MinutePrice, PriceCatalog, Stage, STTPrice, TTSPrice

log = structlog.get_logger("voicerun.metering")

PLATFORM = "voicerun"
"""The `agent` stage's provider: this runtime, priced per minute of call."""

_PLACES = Decimal("0.000001")
_MINUTE = Decimal(60)
_MILLION = Decimal(1_000_000)

ProviderModel = tuple[str, str | None]
CostBreakdown = dict[str, object]
P = TypeVar("P", STTPrice, LLMPrice, TTSPrice, MinutePrice)


def _dec(x: float) -> Decimal:
    # A measured float (seconds) enters through its shortest text, so 90.0 is exactly 90.
    return Decimal(repr(float(x)))


def _money(d: Decimal) -> str:
    return str(d.quantize(_PLACES, rounding=ROUND_HALF_EVEN))


def cost_breakdown(
    usage: Usage,
    *,
    stt: ProviderModel,
    llm: ProviderModel,
    tts: ProviderModel,
    telephony: tuple[str, float] | None,
    catalog: PriceCatalog,
    strict: bool = False,
) -> CostBreakdown:
    """The call's cost per stage and in total, priced from `catalog`.

    `telephony` is (provider, seconds), or None for a call without a phone line (its entry is
    null). `input_tokens` counts every prompt token, cached ones included; cached tokens are
    priced at the cached-input rate, the rest at the input rate. A provider/model missing from
    the catalog raises PriceNotFoundError when `strict`; otherwise that stage costs 0, carries
    `"priced": false`, a `price_missing` warning is logged, and the top-level `priced` is false.
    """
    missing: list[str] = []

    def lookup(stage: Stage, who: ProviderModel, kind: type[P]) -> P | None:
        price = catalog.price(stage, who[0], who[1])
        if price is None:
            if strict:
                raise PriceNotFoundError(stage, who[0], who[1])
            log.warning("price_missing", stage=stage, provider=who[0], model=who[1], catalog=catalog.version)
            missing.append(stage)
            return None
        assert isinstance(price, kind), price
        return price

    def flag(stage: Stage, entry: dict[str, object]) -> dict[str, object]:
        return {**entry, "priced": False} if stage in missing else entry

    stt_s = _dec(usage.stt_audio_seconds)
    call_s = _dec(usage.call_seconds)
    costs: list[Decimal] = []

    stt_price = lookup("stt", stt, STTPrice)
    stt_cost = stt_s / _MINUTE * stt_price.per_minute if stt_price else Decimal(0)
    costs.append(stt_cost)

    llm_price = lookup("llm", llm, LLMPrice)
    cached = min(usage.llm_cached_tokens, usage.llm_prompt_tokens)
    llm_cost = Decimal(0)
    if llm_price:
        llm_cost = (
            (usage.llm_prompt_tokens - cached) * llm_price.input_per_1m_tokens
            + cached * llm_price.cached_input_per_1m_tokens
            + usage.llm_completion_tokens * llm_price.output_per_1m_tokens
        ) / _MILLION
    costs.append(llm_cost)

    tts_price = lookup("tts", tts, TTSPrice)
    tts_cost = usage.tts_characters * tts_price.per_1m_characters / _MILLION if tts_price else Decimal(0)
    costs.append(tts_cost)

    phone: dict[str, object] | None = None
    if telephony is not None:
        phone_s = _dec(telephony[1])
        phone_price = lookup("telephony", (telephony[0], None), MinutePrice)
        phone_cost = phone_s / _MINUTE * phone_price.per_minute if phone_price else Decimal(0)
        costs.append(phone_cost)
        phone = flag(
            "telephony",
            {"provider": telephony[0], "cost": _money(phone_cost), "seconds": round(telephony[1], 3)},
        )

    agent_price = lookup("agent", (PLATFORM, None), MinutePrice)
    agent_cost = call_s / _MINUTE * agent_price.per_minute if agent_price else Decimal(0)
    costs.append(agent_cost)

    total = sum((c.quantize(_PLACES, rounding=ROUND_HALF_EVEN) for c in costs), Decimal(0))
    return {
        "total": _money(total),
        "currency": catalog.currency,
        "catalog_version": catalog.version,
        "priced": not missing,
        "voice": flag(
            "tts", {"provider": tts[0], "cost": _money(tts_cost), "characters": usage.tts_characters}
        ),
        "transcriber": flag(
            "stt",
            {"provider": stt[0], "cost": _money(stt_cost), "seconds": round(usage.stt_audio_seconds, 3)},
        ),
        "language_model": flag(
            "llm",
            {
                "provider": llm[0],
                "cost": _money(llm_cost),
                "input_tokens": usage.llm_prompt_tokens,
                "output_tokens": usage.llm_completion_tokens,
            },
        ),
        "telephony": phone,
        "agent": flag(
            "agent",
            {"provider": PLATFORM, "cost": _money(agent_cost), "seconds": round(usage.call_seconds, 3)},
        ),
    }
