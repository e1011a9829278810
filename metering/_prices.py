"""The price catalog: versioned list prices in YAML, per stage, provider and model.

Units, one per stage (field names carry them):
  stt        per_minute of caller audio sent to STT
  llm        input_per_1m_tokens, cached_input_per_1m_tokens, output_per_1m_tokens
  tts        per_1m_characters synthesized
  telephony  per_minute of call
  agent      per_minute of call (the platform's own price)

Model keys are exact names or glob patterns (`nova-3*`, `"*"`). A model is priced by its exact
key, else by the longest pattern that matches it. A spec naming no model (the provider's default
model) is priced by the `default` key, else by `"*"`. So `"*"` prices every model (the embedded
engines), while a provider priced with `default` and named models leaves an unknown model
unpriced rather than silently priced as another one. Money is `Decimal` throughout: YAML numbers are read through their
text (`Decimal(str(x))`), never through float arithmetic.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from fnmatch import fnmatchcase
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError
from ruamel.yaml import YAML
from ruamel.yaml.error import MarkedYAMLError, YAMLError

from ._errors import PriceCatalogError

Stage = Literal["stt", "llm", "tts", "telephony", "agent"]
STAGES: tuple[Stage, ...] = ("stt", "llm", "tts", "telephony", "agent")


def _money(value: object) -> Decimal:
    # bool is an int to Python, and a float goes through its shortest text, never its binary value.
    if isinstance(value, bool) or not isinstance(value, str | int | float | Decimal):
        raise ValueError(f"a price must be a number or a decimal string, got {value!r}")
    try:
        d = value if isinstance(value, Decimal) else Decimal(str(value).strip())
    except InvalidOperation:
        raise ValueError(f"not a decimal number: {value!r}") from None
    if not d.is_finite() or d < 0:
        raise ValueError(f"a price must be finite and not negative, got {value!r}")
    return d


Money = Annotated[Decimal, BeforeValidator(_money)]
M = TypeVar("M", bound=BaseModel)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class STTPrice(_Strict):
    per_minute: Money


class LLMPrice(_Strict):
    input_per_1m_tokens: Money
    cached_input_per_1m_tokens: Money
    """Prompt tokens the provider served from its cache."""
    output_per_1m_tokens: Money


class TTSPrice(_Strict):
    per_1m_characters: Money


class MinutePrice(_Strict):
    per_minute: Money


Price = STTPrice | LLMPrice | TTSPrice | MinutePrice
ModelKey = Annotated[str, Field(min_length=1)]


class PriceCatalog(_Strict):
    """Prices by stage, then provider, then model key (exact name or glob pattern)."""

    version: Annotated[str, Field(pattern=r"^\d{4}-\d{2}-\d{2}$")]
    """The date the list prices were taken, e.g. "2026-11-01"."""
    currency: Literal["USD"] = "USD"
    stt: dict[str, dict[ModelKey, STTPrice]] = Field(default_factory=dict)
    llm: dict[str, dict[ModelKey, LLMPrice]] = Field(default_factory=dict)
    tts: dict[str, dict[ModelKey, TTSPrice]] = Field(default_factory=dict)
    telephony: dict[str, dict[ModelKey, MinutePrice]] = Field(default_factory=dict)
    agent: dict[str, dict[ModelKey, MinutePrice]] = Field(default_factory=dict)

    def price(self, stage: Stage, provider: str, model: str | None) -> Price | None:
        """The price of `provider`/`model` at `stage`, or None when the catalog has none."""
        models: dict[str, Price] = dict(getattr(self, stage).get(provider, {}))
        if model is None:
            return models.get("default", models.get("*"))
        if model in models:
            return models[model]
        patterns = [k for k in models if any(c in k for c in "*?[") and fnmatchcase(model, k)]
        return models[max(patterns, key=len)] if patterns else None


class _Override(_Strict):
    """An operator file: the same shape, every section optional."""

    version: Annotated[str, Field(pattern=r"^\d{4}-\d{2}-\d{2}$")] | None = None
    currency: Literal["USD"] = "USD"
    stt: dict[str, dict[ModelKey, STTPrice]] = Field(default_factory=dict)
    llm: dict[str, dict[ModelKey, LLMPrice]] = Field(default_factory=dict)
    tts: dict[str, dict[ModelKey, TTSPrice]] = Field(default_factory=dict)
    telephony: dict[str, dict[ModelKey, MinutePrice]] = Field(default_factory=dict)
    agent: dict[str, dict[ModelKey, MinutePrice]] = Field(default_factory=dict)


def _read(text: str, where: str) -> Any:
    try:
        return YAML(typ="safe").load(text)
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        at = f":{mark.line + 1}:{mark.column + 1}" if mark is not None else ""
        raise PriceCatalogError(f"{where}{at}: YAML: {exc.problem or exc.context or 'invalid YAML'}") from exc
    except YAMLError as exc:
        raise PriceCatalogError(f"{where}: YAML: {exc}") from exc


def _validate(model: type[M], data: Any, where: str) -> M:
    if not isinstance(data, dict):
        raise PriceCatalogError(f"{where}: a price catalog is a mapping, got {type(data).__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = [
            f"{'.'.join(str(p) for p in err['loc']) or '(top)'}: {err['msg']}" for err in exc.errors()
        ]
        raise PriceCatalogError(f"{where}: " + "; ".join(problems)) from None


def parse_catalog(text: str, where: str = "<prices>") -> PriceCatalog:
    """A complete catalog from YAML text; `where` names it in errors."""
    return _validate(PriceCatalog, _read(text, where), where)


def _default() -> PriceCatalog:
    ref = resources.files(__package__).joinpath("prices.yaml")
    return parse_catalog(ref.read_text(encoding="utf-8"), "metering/prices.yaml")


MAX_CATALOG_BYTES = 1024 * 1024


def load_catalog(path: Path | None = None) -> PriceCatalog:
    """The default catalog, with the operator file at `path` (if any) merged over it.

    Operator entries replace the defaults per stage, provider and model key; everything else
    is kept. The operator's `version` (if given) becomes the catalog's. Any problem raises
    PriceCatalogError naming the file and the key.
    """
    catalog = _default()
    if path is None:
        return catalog
    # A FIFO would block the read forever and a device never end: only a regular file, bounded.
    if path.exists() and not path.is_file():
        raise PriceCatalogError(f"{path}: the price catalog is not a regular file")
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_CATALOG_BYTES + 1)
        if len(raw) > MAX_CATALOG_BYTES:
            raise PriceCatalogError(f"{path}: the price catalog is over {MAX_CATALOG_BYTES} bytes")
        text = raw.decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PriceCatalogError(f"{path}: cannot read the price catalog: {exc}") from exc
    data = _read(text, str(path))
    override = _validate(_Override, {} if data is None else data, str(path))
    merged: dict[str, Any] = {"version": override.version or catalog.version, "currency": catalog.currency}
    for stage in STAGES:
        table: dict[str, dict[str, Price]] = {p: dict(m) for p, m in getattr(catalog, stage).items()}
        for provider, models in getattr(override, stage).items():
            table.setdefault(provider, {}).update(models)
        merged[stage] = table
    return PriceCatalog.model_validate(merged)
