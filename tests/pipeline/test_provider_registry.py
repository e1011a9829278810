"""One registry entry per provider, read by validation, the pool, pricing and the billing export."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

import metering
from pipeline.providers import PROVIDERS, UnknownProviderError

STAGES = ("stt", "llm", "tts")


def test_every_provider_has_a_price_in_the_default_catalog() -> None:
    prices = yaml.safe_load((Path(metering.__file__).parent / "prices.yaml").read_text())
    for stage in STAGES:
        for name in PROVIDERS.names(stage):
            assert name in prices[stage], f"{stage} provider {name!r} has no price in prices.yaml"


def test_billing_names() -> None:
    assert PROVIDERS.billing_name("tts", "polly") == "amazon-polly"
    assert PROVIDERS.billing_name("stt", "deepgram") == "deepgram"
    assert PROVIDERS.billing_name("tts", "retired") == "retired"  # an old ledger row: as recorded


def test_polly_is_priced_by_its_engine() -> None:
    assert PROVIDERS.priced("polly", None, {"engine": "neural"}) == ("polly", "neural")
    assert PROVIDERS.priced("polly", "generative", {"engine": "neural"}) == ("polly", "generative")
    assert PROVIDERS.priced("openai", None, {"engine": "x"}, "tts") == ("openai", None)


def test_an_unknown_name_or_stage_is_one_line_naming_the_choices() -> None:
    with pytest.raises(UnknownProviderError, match=r"unknown tts provider 'x' \(available: hibari, polly"):
        PROVIDERS.entry("tts", "x")
    with pytest.raises(UnknownProviderError, match=r"unknown stage 'vad'"):
        PROVIDERS.names("vad")
