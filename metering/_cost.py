"""A call's cost_breakdown (the shape of the conversations API): usage lines priced from a catalog.

Usage arrives as lines, one per stage, provider and model, so a call that handed off to an agent
with other providers, or fell back to another provider, is priced by whoever served each part.
Each stage entry names the provider that cost the most, or else did the most (the seed's shape
has one); when a stage used more than one, `providers` lists each with its cost and quantity.

Money is computed in Decimal and emitted as decimal strings with 6 places ("0.011550"): JSON
numbers would pass through binary floats, and a bill must add up exactly. Each line's cost is
rounded half-even to 6 places; a stage costs the sum of its lines and `total` the sum of stages.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Literal

import structlog

from ._errors import PriceNotFoundError
from ._prices import LLMPrice, MinutePrice, PriceCatalog, Stage, STTPrice, TTSPrice

log = structlog.get_logger("voicerun.metering")

PLATFORM = "voicerun"
"""The `agent` stage's provider: this runtime, priced per minute of call."""

UsageStage = Literal["stt", "llm", "tts"]
CostBreakdown = dict[str, object]

_PLACES = Decimal("0.000001")
_MS = Decimal("0.001")
_MINUTE = Decimal(60)
_MILLION = Decimal(1_000_000)


def seconds(x: float | Decimal) -> Decimal:
    """Measured seconds as the ledger keeps them: exact decimal milliseconds.

    A float enters through its shortest text (90.0 is exactly 90), never its binary value.
    """
    d = x if isinstance(x, Decimal) else Decimal(repr(float(x)))
    return d.quantize(_MS, rounding=ROUND_HALF_EVEN)


def _money(d: Decimal) -> str:
    return str(d.quantize(_PLACES, rounding=ROUND_HALF_EVEN))


@dataclass(frozen=True, slots=True)
class UsageLine:
    """What one provider/model did at one stage: the unit of pricing and of billing export."""

    stage: UsageStage
    provider: str
    model: str | None
    audio_seconds: Decimal = Decimal(0)
    prompt_tokens: int = 0
    """Every prompt token, cached ones included."""
    completion_tokens: int = 0
    cached_tokens: int = 0
    characters: int = 0

    @property
    def key(self) -> tuple[str, str, str | None]:
        return self.stage, self.provider, self.model

    def __add__(self, other: UsageLine) -> UsageLine:
        assert self.key == other.key, (self.key, other.key)
        return replace(
            self,
            audio_seconds=self.audio_seconds + other.audio_seconds,
            prompt_tokens=self.prompt_tokens + other.prompt_tokens,
            completion_tokens=self.completion_tokens + other.completion_tokens,
            cached_tokens=self.cached_tokens + other.cached_tokens,
            characters=self.characters + other.characters,
        )

    @property
    def empty(self) -> bool:
        return not (self.audio_seconds or self.prompt_tokens or self.completion_tokens or self.characters)


def merge_lines(lines: Iterable[UsageLine]) -> list[UsageLine]:
    """One line per stage/provider/model, in order of first appearance."""
    merged: dict[tuple[str, str, str | None], UsageLine] = {}
    for line in lines:
        merged[line.key] = merged[line.key] + line if line.key in merged else line
    return list(merged.values())


def cost_breakdown(
    lines: Sequence[UsageLine],
    *,
    call_seconds: float | Decimal,
    telephony: tuple[str, float | Decimal] | None,
    catalog: PriceCatalog,
    strict: bool = False,
) -> CostBreakdown:
    """The call's cost per stage and in total, priced from `catalog`.

    `lines` may repeat a stage/provider/model (they are merged); a stage with no line has a null
    provider and costs 0. `telephony` is (provider, seconds), or None for a call without a phone
    line (its entry is null). Cached prompt tokens are priced at the cached-input rate, the rest
    at the input rate. A provider/model missing from the catalog raises PriceNotFoundError when
    `strict`; otherwise it costs 0, its stage carries `"priced": false`, a `price_missing`
    warning is logged, and the top-level `priced` is false.
    """
    missing: set[str] = set()

    def lookup(stage: Stage, provider: str, model: str | None) -> object | None:
        price = catalog.price(stage, provider, model)
        if price is None:
            if strict:
                raise PriceNotFoundError(stage, provider, model)
            log.warning("price_missing", stage=stage, provider=provider, model=model, catalog=catalog.version)
            missing.add(stage)
        return price

    def line_cost(line: UsageLine) -> Decimal:
        price = lookup(line.stage, line.provider, line.model)
        if isinstance(price, STTPrice):
            cost = line.audio_seconds / _MINUTE * price.per_minute
        elif isinstance(price, LLMPrice):
            cached = min(line.cached_tokens, line.prompt_tokens)
            cost = (
                (line.prompt_tokens - cached) * price.input_per_1m_tokens
                + cached * price.cached_input_per_1m_tokens
                + line.completion_tokens * price.output_per_1m_tokens
            ) / _MILLION
        elif isinstance(price, TTSPrice):
            cost = line.characters * price.per_1m_characters / _MILLION
        else:
            assert price is None, price
            cost = Decimal(0)
        return cost.quantize(_PLACES, rounding=ROUND_HALF_EVEN)

    def minutes(stage: Stage, provider: str, secs: Decimal) -> Decimal:
        price = lookup(stage, provider, None)
        assert price is None or isinstance(price, MinutePrice), price
        cost = secs / _MINUTE * price.per_minute if price else Decimal(0)
        return cost.quantize(_PLACES, rounding=ROUND_HALF_EVEN)

    def flag(stage: Stage, entry: dict[str, object]) -> dict[str, object]:
        return {**entry, "priced": False} if stage in missing else entry

    merged = merge_lines(lines)
    stage_totals: list[Decimal] = []

    def stage_entry(stage: UsageStage, quantities: dict[str, object]) -> dict[str, object]:
        priced = [(line, line_cost(line)) for line in merged if line.stage == stage]
        cost = sum((c for _, c in priced), Decimal(0))
        stage_totals.append(cost)
        # The provider that cost the most names the stage, else the one that did the most (two
        # free engines), else the first (max() keeps the first of a tie).
        top = max(priced, key=lambda lc: (lc[1], _amount(lc[0])), default=None)
        entry: dict[str, object] = {"provider": top[0].provider if top else None, "cost": _money(cost)}
        entry.update(quantities)
        if len(priced) > 1:
            entry["providers"] = [
                {"provider": ln.provider, "model": ln.model, "cost": _money(c), **_quantity(ln)}
                for ln, c in priced
            ]
        return flag(stage, entry)

    def total_of(stage: UsageStage, attr: str) -> int:
        return sum(int(getattr(ln, attr)) for ln in merged if ln.stage == stage)

    stt_s = sum((ln.audio_seconds for ln in merged if ln.stage == "stt"), Decimal(0))
    transcriber = stage_entry("stt", {"seconds": float(stt_s)})
    language_model = stage_entry(
        "llm",
        {
            "input_tokens": total_of("llm", "prompt_tokens"),
            "output_tokens": total_of("llm", "completion_tokens"),
        },
    )
    voice = stage_entry("tts", {"characters": total_of("tts", "characters")})

    phone: dict[str, object] | None = None
    if telephony is not None:
        phone_s = seconds(telephony[1])
        phone_cost = minutes("telephony", telephony[0], phone_s)
        stage_totals.append(phone_cost)
        phone = flag(
            "telephony", {"provider": telephony[0], "cost": _money(phone_cost), "seconds": float(phone_s)}
        )

    call_s = seconds(call_seconds)
    agent_cost = minutes("agent", PLATFORM, call_s)
    stage_totals.append(agent_cost)

    return {
        "total": _money(sum(stage_totals, Decimal(0))),
        "currency": catalog.currency,
        "catalog_version": catalog.version,
        "priced": not missing,
        "voice": voice,
        "transcriber": transcriber,
        "language_model": language_model,
        "telephony": phone,
        "agent": flag("agent", {"provider": PLATFORM, "cost": _money(agent_cost), "seconds": float(call_s)}),
    }


def _amount(line: UsageLine) -> Decimal:
    return line.audio_seconds + line.prompt_tokens + line.completion_tokens + line.characters


def _quantity(line: UsageLine) -> dict[str, object]:
    if line.stage == "stt":
        return {"seconds": float(line.audio_seconds)}
    if line.stage == "llm":
        return {"input_tokens": line.prompt_tokens, "output_tokens": line.completion_tokens}
    return {"characters": line.characters}
