"""A provider's config from a workflow's provider spec: `options` checked against the config
dataclass's fields, with `timeouts` and `retry` built from nested mappings. Every provider's
`from_options` goes through here, so a misspelt option reads the same for all of them."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from ._resilience import RetryPolicy, Timeouts


def config_kwargs(label: str, config_type: type[Any], options: Mapping[str, Any]) -> dict[str, Any]:
    """options -> constructor kwargs of `config_type`. Raises ValueError naming `label` and the
    offending key: an unknown option, a nested option that is not a mapping of known numbers."""
    known = {f.name for f in dataclasses.fields(config_type)} - {"model"}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(
            f"{label}: unknown option(s) {', '.join(map(repr, unknown))} "
            f"(known: {', '.join(sorted(known))}; the model is set by the provider's `model`)"
        )
    kwargs = dict(options)
    for key, nested_type in (("timeouts", Timeouts), ("retry", RetryPolicy)):
        if key in kwargs:
            kwargs[key] = _nested(label, key, nested_type, kwargs[key])
    return kwargs


def _nested(label: str, key: str, nested_type: type[Any], value: Any) -> Any:
    if isinstance(value, nested_type):
        return value
    if not isinstance(value, Mapping):
        raise ValueError(f"{label}: option {key!r} must be a mapping, got {type(value).__name__}")
    known = {f.name for f in dataclasses.fields(nested_type)}
    unknown = sorted(set(value) - known)
    if unknown:
        raise ValueError(
            f"{label}: unknown {key} option(s) {', '.join(map(repr, unknown))} (known: {', '.join(sorted(known))})"
        )
    for name, number in value.items():
        if isinstance(number, bool) or not isinstance(number, int | float):
            raise ValueError(f"{label}: {key}.{name} must be a number, got {number!r}")
    try:
        return nested_type(**value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{label}: {key}: {exc}") from exc
