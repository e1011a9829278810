"""Usage metering: the ledger of calls, usage and latency; prices; export to the billing API."""

from ._clock import Clock, utcnow
from ._cost import PLATFORM, CostBreakdown, UsageLine, UsageStage, cost_breakdown, merge_lines, seconds
from ._errors import MeteringError, PriceCatalogError, PriceNotFoundError
from ._exporter import ENDPOINTS, UsageExporter
from ._ledger import (
    BillingIdentity,
    Ledger,
    LedgerConfigError,
    LedgerError,
    LedgerMissingError,
    OutboxItem,
    OutboxStatus,
    database_url,
)
from ._prices import (
    LLMPrice,
    MinutePrice,
    PriceCatalog,
    STTPrice,
    TTSPrice,
    load_catalog,
    parse_catalog,
)
from ._records import CallClosed, CallOpened, CallStatus, Record, TurnReported, UsageReported
from ._reporter import Meter, MeteringLoss

__all__ = [
    "ENDPOINTS",
    "PLATFORM",
    "BillingIdentity",
    "CallClosed",
    "CallOpened",
    "CallStatus",
    "Clock",
    "CostBreakdown",
    "LLMPrice",
    "Ledger",
    "LedgerConfigError",
    "LedgerError",
    "LedgerMissingError",
    "Meter",
    "MeteringError",
    "MeteringLoss",
    "MinutePrice",
    "OutboxItem",
    "OutboxStatus",
    "PriceCatalog",
    "PriceCatalogError",
    "PriceNotFoundError",
    "Record",
    "STTPrice",
    "TTSPrice",
    "TurnReported",
    "UsageExporter",
    "UsageLine",
    "UsageReported",
    "UsageStage",
    "cost_breakdown",
    "database_url",
    "load_catalog",
    "merge_lines",
    "parse_catalog",
    "seconds",
    "utcnow",
]
