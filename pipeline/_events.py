"""What a call reports while it runs: a tagged union, consumed by transports, reports and metering.

Times are seconds on the session's clock; subscribers turn them into wall time if they need it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal


@dataclass(slots=True)
class Usage:
    stt_audio_seconds: float = 0.0
    llm_prompt_tokens: int = 0
    llm_completion_tokens: int = 0
    llm_cached_tokens: int = 0
    tts_characters: int = 0
    call_seconds: float = 0.0


@dataclass(frozen=True, slots=True)
class TurnMetrics:
    """One caller turn, measured at the audio boundary on a monotonic clock (milliseconds)."""

    eou_delay_ms: float
    """Last voiced caller audio -> turn committed to the LLM."""
    stt_latency_ms: float
    """Last voiced caller audio -> final transcript."""
    llm_ttft_ms: float | None
    """Turn committed -> first LLM token."""
    tts_ttfb_ms: float | None
    """First text sent to TTS -> first audio back."""
    e2e_latency_ms: float | None
    """Last voiced caller audio -> first agent audio frame out: the silence the caller hears."""
    interrupted: bool
    failed: bool = False
    """A stage failed while answering (its PipelineFault says which)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class UserSpeechStarted:
    kind: Literal["user_speech_started"] = field(default="user_speech_started", init=False)
    t: float = 0.0


@dataclass(frozen=True, slots=True, kw_only=True)
class UserTranscript:
    kind: Literal["user_transcript"] = field(default="user_transcript", init=False)
    text: str = ""
    final: bool = True
    t: float = 0.0


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentSpeech:
    """What the agent said and the caller heard (only the played part when interrupted)."""

    kind: Literal["agent_speech"] = field(default="agent_speech", init=False)
    text: str = ""
    t: float = 0.0
    interrupted: bool = False
    agent: str | None = None
    """The agent that said it, when a handoff split the reply (None: the current agent)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Backchannel:
    """The caller spoke over the agent with a backchannel; the agent carried on."""

    kind: Literal["backchannel"] = field(default="backchannel", init=False)
    text: str = ""
    t: float = 0.0


@dataclass(frozen=True, slots=True, kw_only=True)
class ToolCalled:
    kind: Literal["tool_called"] = field(default="tool_called", init=False)
    name: str = ""
    arguments: dict[str, Any] = field(default_factory=dict)
    result: Any = None
    is_error: bool = False
    t: float = 0.0


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentHandoff:
    """The call moved to another agent; what follows is the new agent's."""

    kind: Literal["agent_handoff"] = field(default="agent_handoff", init=False)
    from_agent: str | None = None
    to_agent: str = ""
    t: float = 0.0


@dataclass(frozen=True, slots=True, kw_only=True)
class TurnCompleted:
    kind: Literal["turn_completed"] = field(default="turn_completed", init=False)
    metrics: TurnMetrics
    t: float = 0.0


@dataclass(frozen=True, slots=True, kw_only=True)
class PipelineFault:
    """A stage failed; the call goes on. Names the stage and the error."""

    kind: Literal["pipeline_fault"] = field(default="pipeline_fault", init=False)
    stage: Literal["stt", "llm", "tts"] = "llm"
    error: str = ""
    t: float = 0.0


@dataclass(frozen=True, slots=True, kw_only=True)
class UsageRecorded:
    """A stage did billable work: one utterance transcribed, one completion, one segment spoken.

    `agent` is the agent whose voice or LLM did it (None: the start agent), so usage after a
    handoff is priced by that agent's providers.
    """

    kind: Literal["usage_recorded"] = field(default="usage_recorded", init=False)
    stage: Literal["stt", "llm", "tts"] = "llm"
    agent: str | None = None
    audio_seconds: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    characters: int = 0
    served_by: int = 0
    """Which provider of the agent's fallback chain did it (0: the first)."""
    t: float = 0.0


@dataclass(frozen=True, slots=True, kw_only=True)
class CallEnded:
    kind: Literal["call_ended"] = field(default="call_ended", init=False)
    reason: str = ""
    t: float = 0.0


SessionEvent = (
    UserSpeechStarted
    | UserTranscript
    | AgentSpeech
    | Backchannel
    | ToolCalled
    | AgentHandoff
    | TurnCompleted
    | PipelineFault
    | UsageRecorded
    | CallEnded
)
