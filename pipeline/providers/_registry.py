"""Every provider in one table: its stage, its name in workflow files, its config, how it is built,
what it is billed as and which model its usage is priced by.

Workflow validation, the agent's provider pool, pricing and the billing export all read this
table, so adding a provider is one entry here (and its prices in metering/prices.yaml).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypeVar

from .._errors import PipelineError
from .._llm import LLM
from .._stt import STT
from .._tts import TTS
from .deepgram_stt import DeepgramSTT, DeepgramSTTConfig
from .deepgram_tts import DeepgramTTS, DeepgramTTSConfig
from .hibari import HibariConfig, HibariTTS
from .openai_llm import OpenAILLM, OpenAILLMConfig
from .openai_tts import OpenAITTS, OpenAITTSConfig
from .polly import PollyConfig, PollyTTS
from .whisper import WhisperConfig, WhisperSTT

Stage = Literal["stt", "llm", "tts"]
P = TypeVar("P", STT, TTS, LLM)
Options = Mapping[str, Any]


def _model_only(model: str | None, options: Options) -> str | None:
    return model


@dataclass(frozen=True)
class ProviderEntry(Generic[P]):
    """One provider of one stage.

    `check` raises TypeError, ValueError or ProviderError for a model and options the provider
    refuses, without reaching the network; `build` makes the provider (None: the stage has no
    provider object, as for `rules`, which the workflow runtime answers). An `embedded` provider
    runs offline, and its defaults need no check.
    """

    stage: Stage
    name: str
    config_type: type | None
    check: Callable[[str | None, Options], object]
    build: Callable[[str | None, Options], P] | None
    billing_name: str = ""
    """The name the billing export uses (default: `name`)."""
    priced_model: Callable[[str | None, Options], str | None] = _model_only
    """The model a usage line of this provider is priced by, from the spec's model and options."""
    embedded: bool = False

    def __post_init__(self) -> None:
        if not self.billing_name:
            object.__setattr__(self, "billing_name", self.name)


class UnknownProviderError(PipelineError, ValueError):
    """A stage has no provider of this name (a ValueError too: workflow validators raise it)."""


@dataclass(frozen=True)
class ProviderRegistry:
    """The providers of each stage, in the order error messages list them."""

    stt: Mapping[str, ProviderEntry[STT]] = field(default_factory=dict)
    llm: Mapping[str, ProviderEntry[LLM]] = field(default_factory=dict)
    tts: Mapping[str, ProviderEntry[TTS]] = field(default_factory=dict)

    def names(self, stage: str) -> tuple[str, ...]:
        return tuple(self._stage(stage))

    def entry(self, stage: str, name: str) -> ProviderEntry[Any]:
        """Raises UnknownProviderError naming the stage, the name and the names there are."""
        entries = self._stage(stage)
        if name not in entries:
            raise UnknownProviderError(f"unknown {stage} provider {name!r} (available: {', '.join(entries)})")
        return entries[name]

    def billing_name(self, stage: str, name: str) -> str:
        """The billing export's name; a name this build does not know (an old ledger row) as is."""
        entry = self._find(name, stage)
        return entry.billing_name if entry else name

    def priced(
        self, name: str, model: str | None, options: Options, stage: str | None = None
    ) -> tuple[str, str | None]:
        """(provider, model) a usage line is priced as; an unknown name by its model."""
        entry = self._find(name, stage)
        return name, (entry.priced_model if entry else _model_only)(model, options)

    def _find(self, name: str, stage: str | None) -> ProviderEntry[Any] | None:
        # A name shared by stages (openai, deepgram) is billed and priced alike in each.
        for s in (stage,) if stage is not None else _STAGES:
            if s in _STAGES and name in (entries := self._stage(s)):
                return entries[name]
        return None

    def _stage(self, stage: str) -> Mapping[str, ProviderEntry[Any]]:
        if stage not in _STAGES:
            raise UnknownProviderError(f"unknown stage {stage!r} (stages: {', '.join(_STAGES)})")
        entries: Mapping[str, ProviderEntry[Any]] = getattr(self, stage)
        return entries


_STAGES = ("stt", "llm", "tts")
_KINDS = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def _fields(config_type: type[Any], options: Options) -> None:
    """Unknown options and options of the wrong kind, for the configs built as `Config(**options)`
    (the cloud providers' from_options check their own)."""
    fields = {f.name: f.default for f in dataclasses.fields(config_type)}
    unknown = sorted(set(options) - set(fields))
    if unknown:
        raise ValueError(
            f"unknown option(s) {', '.join(map(repr, unknown))} (known: {', '.join(sorted(fields))})"
        )
    for name, value in options.items():
        default = fields[name]
        if default is None or default is dataclasses.MISSING:
            continue
        kind = float if type(default) is float else type(default)
        numeric = kind is float and isinstance(value, int)
        if isinstance(value, bool) != isinstance(default, bool) or not (isinstance(value, kind) or numeric):
            raise ValueError(f"option {name!r} must be {_KINDS[kind]}, got {value!r}")


def _whisper_config(model: str | None, options: Options) -> WhisperConfig:
    if model is not None:
        raise ValueError(
            f"model {model!r}: whisper runs the tiny.en model inside the package; "
            "options.model_dir names another CTranslate2 Whisper model"
        )
    _fields(WhisperConfig, options)
    return WhisperConfig(**options)


def _hibari_config(model: str | None, options: Options) -> HibariConfig:
    opts = dict(options)
    if model is not None:
        opts.setdefault("voice", model)  # the model is the voice
    _fields(HibariConfig, opts)
    return HibariConfig(**opts)


def _rules(model: str | None, options: Options) -> None:
    if model is not None or options:
        raise ValueError("takes no model or options: it answers with the agent's rules and fallback")


def _polly_priced(model: str | None, options: Options) -> str | None:
    # Polly takes its engine (what it is priced by) as the model or as the `engine` option.
    engine = options.get("engine")
    return model or (engine if isinstance(engine, str) else None)


def _whisper(model: str | None, options: Options) -> STT:
    return WhisperSTT(_whisper_config(model, options))


def _hibari(model: str | None, options: Options) -> TTS:
    return HibariTTS(_hibari_config(model, options))


def _registry(entries: Iterable[ProviderEntry[Any]]) -> ProviderRegistry:
    by_stage: dict[str, dict[str, ProviderEntry[Any]]] = {s: {} for s in _STAGES}
    for e in entries:
        if e.name in by_stage[e.stage] or e.name == "local":
            raise ValueError(f"{e.stage} provider {e.name!r} is registered twice or reserved")
        by_stage[e.stage][e.name] = e
    return ProviderRegistry(**by_stage)


PROVIDERS = _registry(
    [
        ProviderEntry[STT]("stt", "whisper", WhisperConfig, _whisper, _whisper, embedded=True),
        ProviderEntry[STT](
            "stt",
            "deepgram",
            DeepgramSTTConfig,
            DeepgramSTTConfig.from_options,
            lambda m, o: DeepgramSTT(DeepgramSTTConfig.from_options(m, o)),
        ),
        ProviderEntry[LLM]("llm", "rules", None, _rules, None, embedded=True),
        ProviderEntry[LLM](
            "llm",
            "openai",
            OpenAILLMConfig,
            OpenAILLMConfig.from_options,
            lambda m, o: OpenAILLM(OpenAILLMConfig.from_options(m, o)),
        ),
        ProviderEntry[TTS]("tts", "hibari", HibariConfig, _hibari, _hibari, embedded=True),
        ProviderEntry[TTS](
            "tts",
            "polly",
            PollyConfig,
            PollyConfig.from_options,
            lambda m, o: PollyTTS(PollyConfig.from_options(m, o)),
            billing_name="amazon-polly",
            priced_model=_polly_priced,
        ),
        ProviderEntry[TTS](
            "tts",
            "openai",
            OpenAITTSConfig,
            OpenAITTSConfig.from_options,
            lambda m, o: OpenAITTS(OpenAITTSConfig.from_options(m, o)),
        ),
        ProviderEntry[TTS](
            "tts",
            "deepgram",
            DeepgramTTSConfig,
            DeepgramTTSConfig.from_options,
            lambda m, o: DeepgramTTS(DeepgramTTSConfig.from_options(m, o)),
        ),
    ]
)
"""The providers of this build."""
