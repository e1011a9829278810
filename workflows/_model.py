"""The workflow language, version 1, as validated models.

Unknown keys are errors everywhere (extra="forbid"), so a typo is caught at load time rather
than during a live call. Checks that need the whole file (references between agents, tools and
variables; templates) live in _validate.py, so every problem in a file is reported at once.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from yarl import URL

from pipeline.providers import PROVIDERS

from ._json import json_safe
from ._provider_options import check_provider

_SLUG = r"^[a-z0-9][a-z0-9-]{0,63}$"
NAME_PATTERN = r"^[A-Za-z][A-Za-z0-9_-]{0,63}$"
Name = Annotated[str, Field(pattern=NAME_PATTERN)]
VarName = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")]
"""Variables are read by templates ({{user.NAME}}), so their names are identifiers."""

BUILTIN_TOOLS = ("end_call", "transfer_call", "set_variable")
"""Tools every agent may list without defining them."""
BACK = "back"
"""A handoff target meaning "the agent that handed the call to this one"."""


class _Strict(BaseModel):
    # Attribute docstrings become descriptions in `voicerun schema`, so editors show them.
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


class ProviderSpec(_Strict):
    """A provider by name, with its model, provider-specific options, and the providers to switch
    to if it fails during a call. In YAML also `tts: polly` or a list, `tts: [polly, openai, local]`."""

    provider: str
    model: str | None = None
    options: dict[str, Any] = Field(default_factory=dict)
    fallback: tuple[ProviderSpec, ...] = ()
    """Tried in order when this provider fails; `local` is the embedded engine of the stage."""

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        if isinstance(value, str):
            return {"provider": value}
        if isinstance(value, list):
            if not value:
                raise ValueError("a provider list needs at least one provider")
            first, *rest = value
            head = {"provider": first} if isinstance(first, str) else dict(first)
            return {**head, "fallback": [*head.get("fallback", []), *rest]}
        return value

    def chain(self) -> tuple[ProviderSpec, ...]:
        """This provider, then its fallbacks in order."""
        return (self.model_copy(update={"fallback": ()}), *self.fallback)


STT_PROVIDERS = PROVIDERS.names("stt")
LLM_PROVIDERS = PROVIDERS.names("llm")
TTS_PROVIDERS = PROVIDERS.names("tts")


class _StageSpec(ProviderSpec):
    """A ProviderSpec whose provider names are checked for one stage; `local` is its embedded engine.

    Its model and options are checked as the runtime builds the provider, so a file that
    validates is a file whose providers start (API keys and hosts aside)."""

    _stage: ClassVar[str] = ""
    _names: ClassVar[tuple[str, ...]] = ()
    _local: ClassVar[str] = ""
    _refused: ClassVar[dict[str, str]] = {}
    """Names the stage has but not here, and why."""

    @field_validator("provider")
    @classmethod
    def _known(cls, v: str) -> str:
        v = cls._local if v == "local" else v
        if v in cls._refused:
            raise ValueError(cls._refused[v])
        if v not in cls._names:
            raise ValueError(f"unknown provider {v!r} (available: {', '.join(cls._names)}, local)")
        return v

    @model_validator(mode="after")
    def _buildable(self) -> _StageSpec:
        check_provider(self._stage, self.provider, self.model, self.options)
        return self


class STTSpec(_StageSpec):
    _stage = "stt"
    _names = STT_PROVIDERS
    _local = "whisper"
    fallback: tuple[STTSpec, ...] = ()


class _LLMFallbackSpec(_StageSpec):
    _stage = "llm"
    _names = LLM_PROVIDERS
    _local = "rules"
    _refused = {
        "rules": "llm fallback 'rules'/'local' is not supported: the agent's rules already run before any LLM"
    }
    fallback: tuple[_LLMFallbackSpec, ...] = ()


class LLMSpec(_StageSpec):
    _stage = "llm"
    _names = LLM_PROVIDERS
    _local = "rules"
    fallback: tuple[_LLMFallbackSpec, ...] = ()

    @model_validator(mode="after")
    def _rules_alone(self) -> LLMSpec:
        if self.provider == "rules" and self.fallback:
            raise ValueError("llm 'rules' takes no fallback: it cannot fail")
        return self


class TTSSpec(_StageSpec):
    _stage = "tts"
    _names = TTS_PROVIDERS
    _local = "hibari"
    fallback: tuple[TTSSpec, ...] = ()


class TurnSettings(_Strict):
    end_of_turn: Literal["silence", "model"] = "model"
    """How the caller's turn is judged over: `silence` ends it after end_of_speech_ms of silence;
    `model` asks a learned end-of-turn model (Smart Turn v3.2, offline) and the partial transcript
    at each pause, ending at once on "complete", else waiting up to end_of_turn_max_wait_ms."""
    end_of_turn_threshold: Annotated[float, Field(gt=0.0, le=1.0)] = 0.5
    """With end_of_turn: model, the model's P(complete) at or above which the turn ends at once."""
    end_of_turn_ask_after_ms: Annotated[int, Field(ge=0, le=1000)] = 200
    """With end_of_turn: model, silence after which the model is asked, once per pause."""
    end_of_turn_max_wait_ms: Annotated[int, Field(ge=300, le=5000)] = 2000
    """With end_of_turn: model, the longest pause inside a turn: the turn ends here whatever the
    model and the transcript say."""
    end_of_speech_ms: Annotated[int, Field(ge=100, le=3000)] = 300
    """Silence that ends the turn with end_of_turn: silence; with model, when the model has no
    answer in time (too busy)."""
    start_of_speech_ms: Annotated[int, Field(ge=20, le=1000)] = 60
    vad_mode: Annotated[int, Field(ge=0, le=3)] = 2
    preroll_ms: Annotated[int, Field(ge=0, le=1000)] = 300
    barge_in_ms: Annotated[int, Field(ge=20, le=2000)] = 60
    barge_in_confirm_ms: Annotated[int, Field(ge=0, le=2000)] = 400
    """A sound over the agent well above the line's noise floor pauses the agent at once; unless
    the caller's speech starts within this long, it resumes where it paused. 0: only voiced
    speech (barge_in_ms) pauses it."""
    backchannel_max_ms: Annotated[int, Field(ge=100, le=5000)] = 1200
    backchannels: tuple[str, ...] | None = None
    first_clause_min_chars: Annotated[int, Field(ge=0, le=200)] = 16

    @model_validator(mode="after")
    def _end_of_turn_timings(self) -> TurnSettings:
        if self.end_of_turn == "model" and not (
            self.end_of_turn_ask_after_ms <= self.end_of_speech_ms <= self.end_of_turn_max_wait_ms
        ):
            raise ValueError(
                "with end_of_turn: model, end_of_turn_ask_after_ms <= end_of_speech_ms <= "
                f"end_of_turn_max_wait_ms must hold, got {self.end_of_turn_ask_after_ms}, "
                f"{self.end_of_speech_ms}, {self.end_of_turn_max_wait_ms}"
            )
        return self


class Defaults(_Strict):
    stt: STTSpec = STTSpec(provider="whisper")
    llm: LLMSpec = LLMSpec(provider="rules")
    tts: TTSSpec = TTSSpec(provider="hibari")
    turn: TurnSettings = TurnSettings()
    max_duration_seconds: Annotated[float, Field(gt=0, le=86_400)] = 600
    silence_timeout_seconds: Annotated[float, Field(gt=0, le=3_600)] | None = 30
    """Caller and agent both silent this long: the agent says `check_in`; as long again, the
    call ends (status timeout). null: an open line is never ended for silence."""
    check_in: Annotated[str, Field(min_length=1, max_length=500)] = "Are you still there?"


class VariableSpec(_Strict):
    """A typed value: a caller's `user_data` input (`variables`) or call state (`vars`)."""

    type: Literal["string", "number", "integer", "boolean", "enum"] = "string"
    required: bool = False
    default: str | int | float | bool | None = None
    values: tuple[str, ...] | None = None
    """The allowed values of an enum."""
    description: str | None = None

    @model_validator(mode="after")
    def _consistent(self) -> VariableSpec:
        if self.type == "enum" and not self.values:
            raise ValueError("an enum variable needs 'values'")
        if self.type != "enum" and self.values is not None:
            raise ValueError("'values' is only for enum variables")
        if self.default is not None and not value_fits(self, self.default):
            raise ValueError(f"default {self.default!r} is not a valid {self.type}")
        return self


def value_fits(spec: VariableSpec, value: Any) -> bool:
    match spec.type:
        case "string":
            return isinstance(value, str)
        case "number":
            return isinstance(value, int | float) and not isinstance(value, bool)
        case "integer":
            return isinstance(value, int) and not isinstance(value, bool)
        case "boolean":
            return isinstance(value, bool)
        case "enum":
            return isinstance(value, str) and value in (spec.values or ())


# `scheme://authority`: where a template could move a request to another host (`@evil:1` after
# the host makes the intended host the userinfo), so templates may only follow it.
URL_ORIGIN = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://(?P<authority>[^/?#]*)")
FORM = "application/x-www-form-urlencoded"
TEXT_BODY_MEDIA = (FORM, "text/plain")
TEXT_BODY_TEMPLATES = (
    f"a text body takes templates only with a Content-Type header of {FORM} (values are "
    "form-encoded) or text/plain; write a JSON body as a mapping or list (values are sent as JSON values)"
)


MAX_RESULT_BYTES = 256 * 1024
"""The most an HTTP tool's response may be (its default), and what any other tool result is cut
to: more would flood the LLM's context (and its bill)."""


class HttpSpec(_Strict):
    """An HTTP call; url, headers and string values in body are templates ({{args.x}} too)."""

    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE"] = "GET"
    url: str
    """Templates fill the path, query and fragment only, each value percent-encoded."""
    headers: dict[str, str] = Field(default_factory=dict)
    body: Any = None

    @field_validator("body")
    @classmethod
    def _json_body(cls, body: Any) -> Any:
        # YAML has dates and sets that JSON has not; the body is sent as JSON
        return json_safe(body)

    timeout_s: Annotated[float, Field(gt=0, le=60)] = 5.0
    max_response_bytes: Annotated[int, Field(gt=0, le=16 * 1024 * 1024)] = MAX_RESULT_BYTES
    """A larger response is an error result: it would flood the LLM's context (and its bill)."""
    save: dict[str, str] = Field(default_factory=dict)
    """vars name -> dotted path in the JSON response (`slots.0.time`)."""

    @field_validator("url")
    @classmethod
    def _origin_is_literal(cls, url: str) -> str:
        origin = URL_ORIGIN.match(url)
        if "{{" in (origin.group() if origin else url.partition("/")[0]):
            raise ValueError(
                "a template cannot fill the scheme, user, host or port of a URL: write them out "
                "(templates fill the path, query and fragment, percent-encoded)"
            )
        if origin is None:
            raise ValueError("must be an absolute http:// or https:// URL")
        if origin.group("scheme").lower() not in ("http", "https"):
            raise ValueError(f"must be an http:// or https:// URL, not {origin.group('scheme')}://")
        try:
            host = URL(origin.group()).host
        except ValueError as exc:
            raise ValueError(f"is not a valid URL: {exc}") from exc
        if not host:
            raise ValueError("has no host")
        return url

    def media_type(self) -> str:
        return media_type(self.headers)


def media_type(headers: object) -> str:
    """The media type of a Content-Type header in headers, lower-case; empty when there is none."""
    if isinstance(headers, Mapping):
        for key, value in headers.items():
            if isinstance(key, str) and key.lower() == "content-type" and isinstance(value, str):
                return value.split(";")[0].strip().lower()
    return ""


class ToolDef(_Strict):
    description: str
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})
    """JSON Schema of the arguments; checked as a schema at load, arguments checked at call time."""
    http: HttpSpec | None = None
    python: Annotated[str, Field(pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")] | None = None
    """"package.module:function", sync or async; called with the arguments as keywords."""
    timeout_s: Annotated[float, Field(gt=0, le=60)] | None = None
    """Python tools: the most a call may take (default 10 s), then it is an error result. HTTP
    tools take theirs from `http.timeout_s`."""
    filler: str | None = None
    """Said while the tool runs."""

    @model_validator(mode="after")
    def _one_implementation(self) -> ToolDef:
        if (self.http is None) == (self.python is None):
            raise ValueError("a tool needs exactly one of 'http' or 'python'")
        if self.http is not None and self.timeout_s is not None:
            raise ValueError("an HTTP tool's timeout is http.timeout_s, not timeout_s")
        return self


class LastN(_Strict):
    last_n: Annotated[int, Field(ge=1, le=100)]


ContextPolicy = Literal["full", "summary", "none"] | LastN


class HandoffSpec(_Strict):
    to: str
    """An agent name, or `back` for the agent that handed over."""
    description: str | None = None
    """When to transfer; offered to the LLM as the transfer tool's description."""
    context: ContextPolicy = "full"
    say: str | None = None
    """Said at the switch, before the new agent speaks."""


class ToolCallSpec(_Strict):
    name: str
    arguments: dict[str, Any] = Field(default_factory=dict)

    @field_validator("arguments")
    @classmethod
    def _json_arguments(cls, arguments: dict[str, Any]) -> Any:
        # as the LLM would give them: a YAML date is its ISO string
        return json_safe(arguments)


KEYPAD_PREFIX = "[keypad] "
"""How keys pressed on a phone reach the conversation: one caller turn, this prefix and the
digits ("[keypad] 123#"), which the LLM reads as such and `dtmf` rules match."""


def keypad_turn(digits: str) -> str:
    return KEYPAD_PREFIX + digits


def keypad_digits(text: str) -> str | None:
    """The keys of a keypad turn; None for a spoken one."""
    return text[len(KEYPAD_PREFIX) :] if text.startswith(KEYPAD_PREFIX) else None


class RuleSpec(_Strict):
    """Checked in order on each final caller transcript, before any LLM; the first match acts."""

    match: str | None = None
    """A regular expression, searched case-insensitively."""
    keywords: tuple[str, ...] | None = None
    """Any of these words or phrases, as whole words."""
    dtmf: str | None = None
    """A regular expression the keys pressed on a phone must match whole ("1", "[0-9]{4}#");
    only keypad turns are matched against it, and only it matches them."""
    say: str | None = None
    tool: ToolCallSpec | None = None
    handoff: str | None = None
    end_call: bool = False

    @field_validator("match", "dtmf")
    @classmethod
    def _regex_compiles(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                re.compile(v)
            except re.error as exc:
                raise ValueError(f"invalid regular expression: {exc}") from exc
        return v

    @model_validator(mode="after")
    def _trigger_and_action(self) -> RuleSpec:
        if sum(t is not None for t in (self.match, self.keywords, self.dtmf)) != 1:
            raise ValueError("a rule needs exactly one of 'match', 'keywords' or 'dtmf'")
        if self.say is None and self.tool is None and self.handoff is None and not self.end_call:
            raise ValueError("a rule needs an action: 'say', 'tool', 'handoff' or 'end_call: true'")
        return self

    def matches(self, text: str) -> bool:
        """Whether this rule acts on the caller's turn `text` (spoken, or a keypad turn)."""
        digits = keypad_digits(text)
        if self.dtmf is not None:
            return digits is not None and re.fullmatch(self.dtmf, digits) is not None
        return digits is None and self.pattern().search(text) is not None

    def pattern(self) -> re.Pattern[str]:
        if self.dtmf is not None:
            return re.compile(self.dtmf)
        if self.match is not None:
            return re.compile(self.match, re.IGNORECASE)
        words = "|".join(re.escape(k.strip()) for k in self.keywords or () if k.strip())
        return re.compile(rf"\b(?:{words})\b", re.IGNORECASE)


class AgentSpec(_Strict):
    instructions: str
    greeting: str | None = None
    tools: tuple[str, ...] = ()
    handoffs: tuple[HandoffSpec, ...] = ()
    rules: tuple[RuleSpec, ...] = ()
    fallback: str = "Sorry, I didn't catch that. Could you say it another way?"
    stt: STTSpec | None = None
    llm: LLMSpec | None = None
    tts: TTSSpec | None = None
    turn: TurnSettings | None = None


class ExpectSpec(_Strict):
    agent: str | None = None
    """The agent active after the turn."""
    reply: str | None = None
    """A regular expression the agent's reply must match (searched, case-insensitive)."""
    tool_calls: tuple[ToolCallSpec, ...] | None = None
    """Tools called during the turn, in order; listed arguments must match (others may exist)."""
    handoff: str | None = None
    """The agent handed to during the turn (its name, also when the handoff was `back`)."""
    end_call: bool | None = None


class TestStep(_Strict):
    user: str
    expect: ExpectSpec = ExpectSpec()


class TestSpec(_Strict):
    name: str
    user_data: dict[str, Any] = Field(default_factory=dict)
    tool_results: dict[str, Any] = Field(default_factory=dict)
    """Canned results by tool name: the tool is not run."""
    steps: tuple[TestStep, ...] = Field(min_length=1)


class Workflow(_Strict):
    version: Literal[1]
    slug: Annotated[str, Field(pattern=_SLUG)]
    name: str | None = None
    description: str | None = None
    variables: dict[VarName, VariableSpec] = Field(default_factory=dict)
    vars: dict[VarName, VariableSpec] = Field(default_factory=dict)
    defaults: Defaults = Defaults()
    start: str
    tools: dict[Name, ToolDef] = Field(default_factory=dict)
    handoffs: tuple[HandoffSpec, ...] = ()
    """Global handoffs, offered by every agent."""
    agents: dict[Name, AgentSpec] = Field(min_length=1)
    tests: tuple[TestSpec, ...] = ()

    # `start` naming an agent is checked in _validate.py with the other references, so it is
    # reported at the `start` value together with every other problem in the file.

    def agent(self, name: str) -> AgentSpec:
        return self.agents[name]

    def stt_for(self, name: str) -> ProviderSpec:
        return self.agents[name].stt or self.defaults.stt

    def llm_for(self, name: str) -> ProviderSpec:
        return self.agents[name].llm or self.defaults.llm

    def tts_for(self, name: str) -> ProviderSpec:
        return self.agents[name].tts or self.defaults.tts

    def turn_for(self, name: str) -> TurnSettings:
        return self.agents[name].turn or self.defaults.turn

    def handoffs_for(self, name: str) -> tuple[HandoffSpec, ...]:
        return (*self.agents[name].handoffs, *self.handoffs)
