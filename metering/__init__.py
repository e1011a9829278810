"""Usage metering: the ledger of calls, usage and latency; prices; export to the billing API."""

from ._clock import Clock, utcnow
from ._cost import PLATFORM, CostBreakdown, UsageLine, UsageStage, cost_breakdown, merge_lines, seconds
from ._errors import MeteringError, PriceCatalogError, PriceNotFoundError
from ._exporter import ENDPOINTS, UsageExporter
from ._json import JSONValue
from ._ledger import (
    BillingIdentity,
    Ledger,
    LedgerConfigError,
    LedgerError,
    LedgerMissingError,
    OutboxItem,
    OutboxStatus,
    UnknownCallError,
    database_url,
)
from ._metrics import PROVIDER_FALLBACKS, bound_port, metrics_app, serve_metrics
from ._open import Metering, MeteringConfig, open_ledger, open_metering, usage_exporter
from ._prices import (
    LLMPrice,
    MinutePrice,
    PriceCatalog,
    STTPrice,
    TTSPrice,
    load_catalog,
    parse_catalog,
)
from ._records import (
    CALL_STATUSES,
    CallClosed,
    CallDirection,
    CallOpened,
    CallProgressed,
    CallStatus,
    Record,
    RecordingStored,
    RunningStatus,
    TurnReported,
    UsageReported,
)
from ._reporter import Meter, MeteringLoss
from ._view import CallRecording, CallView

__all__ = [
    "CALL_STATUSES",
    "ENDPOINTS",
    "PLATFORM",
    "PROVIDER_FALLBACKS",
    "BillingIdentity",
    "CallClosed",
    "CallDirection",
    "CallOpened",
    "CallProgressed",
    "CallRecording",
    "CallStatus",
    "CallView",
    "Clock",
    "CostBreakdown",
    "JSONValue",
    "LLMPrice",
    "Ledger",
    "LedgerConfigError",
    "LedgerError",
    "LedgerMissingError",
    "Meter",
    "Metering",
    "MeteringConfig",
    "MeteringError",
    "MeteringLoss",
    "MinutePrice",
    "OutboxItem",
    "OutboxStatus",
    "PriceCatalog",
    "PriceCatalogError",
    "PriceNotFoundError",
    "Record",
    "RecordingStored",
    "RunningStatus",
    "STTPrice",
    "TTSPrice",
    "TurnReported",
    "UnknownCallError",
    "UsageExporter",
    "UsageLine",
    "UsageReported",
    "UsageStage",
    "bound_port",
    "cost_breakdown",
    "database_url",
    "load_catalog",
    "merge_lines",
    "metrics_app",
    "open_ledger",
    "open_metering",
    "parse_catalog",
    "seconds",
    "serve_metrics",
    "usage_exporter",
    "utcnow",
]
