"""Usage metering: what a call cost, priced from a versioned price catalog."""

from ._cost import PLATFORM, CostBreakdown, cost_breakdown
from ._errors import MeteringError, PriceCatalogError, PriceNotFoundError
from ._prices import (
    LLMPrice,
    MinutePrice,
    PriceCatalog,
    STTPrice,
    TTSPrice,
    load_catalog,
    parse_catalog,
)

__all__ = [
    "PLATFORM",
    "CostBreakdown",
    "LLMPrice",
    "MeteringError",
    "MinutePrice",
    "PriceCatalog",
    "PriceCatalogError",
    "PriceNotFoundError",
    "STTPrice",
    "TTSPrice",
    "cost_breakdown",
    "load_catalog",
    "parse_catalog",
]
