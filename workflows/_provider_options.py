"""A provider's model and options checked as the runtime will build them, so `voicerun validate`
refuses what a call would refuse at start (the pool in agent/_providers.py builds from the same
registry entries).

Only what the file decides is checked: a missing API key or an unreachable host belongs to the
machine a call runs on, and is reported when the provider starts.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pipeline import ProviderError
from pipeline.providers import PROVIDERS

__all__ = ["check_provider"]


def check_provider(stage: str, provider: str, model: str | None, options: Mapping[str, Any]) -> None:
    """ValueError naming the stage, the provider and what it refuses in model or options."""
    entry = PROVIDERS.entry(stage, provider)
    if entry.embedded and not options and model is None:
        return  # the embedded defaults: nothing to check, and no engine to load
    try:
        # An embedded engine is built, not just configured: it refuses what it does not ship (a
        # voice) at construction, and constructing it loads nothing.
        (entry.build if entry.embedded and entry.build else entry.check)(model, dict(options))
    except (TypeError, ValueError, ProviderError) as exc:
        raise ValueError(f"{stage} provider {provider!r}: {exc}") from exc
