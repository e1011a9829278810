"""The metering package's error tree."""

from __future__ import annotations


class MeteringError(Exception):
    """Root of every error the metering package raises."""


class PriceCatalogError(MeteringError):
    """A price catalog cannot be read or validated; names the file and the key."""


class PriceNotFoundError(MeteringError):
    """A call used a provider/model the catalog has no price for (strict pricing)."""

    def __init__(self, stage: str, provider: str, model: str | None) -> None:
        self.stage, self.provider, self.model = stage, provider, model
        super().__init__(f"no {stage} price for provider {provider!r} model {model or '(default)'!r}")
