"""The workflow language, version 1, as validated models.

Unknown keys are errors everywhere (extra="forbid"), so a typo is caught at load time rather
than during a live call.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

_SLUG = r"^[a-z0-9][a-z0-9-]{0,63}$"
_NAME = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ProviderSpec(_Strict):
    """A provider by name, with its model and provider-specific options."""

    provider: str
    model: str | None = None
    options: dict[str, Any] = Field(default_factory=dict)


class TurnSettings(_Strict):
    end_of_speech_ms: Annotated[int, Field(ge=100, le=3000)] = 300
    start_of_speech_ms: Annotated[int, Field(ge=20, le=1000)] = 60
    vad_mode: Annotated[int, Field(ge=0, le=3)] = 2
    preroll_ms: Annotated[int, Field(ge=0, le=1000)] = 300
    barge_in_ms: Annotated[int, Field(ge=20, le=2000)] = 60
    backchannel_max_ms: Annotated[int, Field(ge=100, le=5000)] = 1200
    backchannels: tuple[str, ...] | None = None
    first_clause_min_chars: Annotated[int, Field(ge=0, le=200)] = 16


class Defaults(_Strict):
    stt: ProviderSpec = ProviderSpec(provider="whisper")
    llm: ProviderSpec = ProviderSpec(provider="rules")
    tts: ProviderSpec = ProviderSpec(provider="hibari")
    turn: TurnSettings = TurnSettings()
    max_duration_seconds: Annotated[float, Field(gt=0, le=86_400)] = 600


class RuleSpec(_Strict):
    """Checked in order on each final caller transcript; the first match answers."""

    match: str | None = None
    """A regular expression, searched case-insensitively."""
    keywords: tuple[str, ...] | None = None
    """Any of these words or phrases, as whole words."""
    say: str | None = None
    end_call: bool = False

    @field_validator("match")
    @classmethod
    def _regex_compiles(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                re.compile(v)
            except re.error as exc:
                raise ValueError(f"invalid regular expression: {exc}") from exc
        return v

    @model_validator(mode="after")
    def _one_trigger(self) -> RuleSpec:
        if (self.match is None) == (self.keywords is None):
            raise ValueError("a rule needs exactly one of 'match' or 'keywords'")
        if self.say is None and not self.end_call:
            raise ValueError("a rule needs 'say' or 'end_call: true'")
        return self

    def pattern(self) -> re.Pattern[str]:
        if self.match is not None:
            return re.compile(self.match, re.IGNORECASE)
        words = "|".join(re.escape(k.strip()) for k in self.keywords or () if k.strip())
        return re.compile(rf"\b(?:{words})\b", re.IGNORECASE)


class AgentSpec(_Strict):
    instructions: str
    greeting: str | None = None
    rules: tuple[RuleSpec, ...] = ()
    fallback: str = "Sorry, I didn't catch that. Could you say it another way?"
    stt: ProviderSpec | None = None
    llm: ProviderSpec | None = None
    tts: ProviderSpec | None = None
    turn: TurnSettings | None = None


class Workflow(_Strict):
    version: Literal[1]
    slug: Annotated[str, Field(pattern=_SLUG)]
    name: str | None = None
    description: str | None = None
    defaults: Defaults = Defaults()
    start: str
    agents: dict[Annotated[str, Field(pattern=_NAME)], AgentSpec] = Field(min_length=1)

    @model_validator(mode="after")
    def _start_exists(self) -> Workflow:
        if self.start not in self.agents:
            known = ", ".join(sorted(self.agents))
            raise ValueError(f"start agent {self.start!r} is not defined (agents: {known})")
        return self

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
