"""voicerun's streaming voice pipeline: audio format, VAD, STT/LLM/TTS interfaces, turn-taking.

Imports nothing else of voicerun's; transports and workflows plug in from above.
"""

from ._audio import (
    FRAME_BYTES,
    FRAME_MS,
    FRAME_S,
    FRAME_SAMPLES,
    SAMPLE_RATE,
    Int16Array,
    frames,
    read_wav,
    rms_dbfs,
    to_internal,
    write_wav,
)
from ._clock import Clock, RealClock, VirtualClock
from ._dialogue import Dialogue, EndCallEvent, ReplyEvent, ToolOutcome, ToolResultEvent, ToolRunner
from ._errors import AudioFormatError, PipelineError, ProviderError
from ._events import (
    AgentSpeech,
    Backchannel,
    CallEnded,
    PipelineFault,
    SessionEvent,
    ToolCalled,
    TurnCompleted,
    TurnMetrics,
    Usage,
    UserSpeechStarted,
    UserTranscript,
)
from ._llm import LLM, LLMEvent, LLMUsage, Message, TextDelta, ToolCall, ToolCallRequest, ToolSpec
from ._playout import AudioSink, Playout
from ._session import DEFAULT_BACKCHANNELS, CallSummary, SessionConfig, TurnConfig, VoiceSession, turn_summary
from ._stt import STT, InterimCallback, STTSession, Transcript, Utterance
from ._text import SentenceSplitter, is_backchannel
from ._tts import TTS
from ._vad import Endpointer, VADConfig, VADResult

__all__ = [
    "DEFAULT_BACKCHANNELS",
    "FRAME_BYTES",
    "FRAME_MS",
    "FRAME_S",
    "FRAME_SAMPLES",
    "LLM",
    "SAMPLE_RATE",
    "STT",
    "TTS",
    "AgentSpeech",
    "AudioFormatError",
    "AudioSink",
    "Backchannel",
    "CallEnded",
    "CallSummary",
    "Clock",
    "Dialogue",
    "EndCallEvent",
    "Endpointer",
    "Int16Array",
    "InterimCallback",
    "LLMEvent",
    "LLMUsage",
    "Message",
    "PipelineError",
    "PipelineFault",
    "Playout",
    "ProviderError",
    "RealClock",
    "ReplyEvent",
    "STTSession",
    "SentenceSplitter",
    "SessionConfig",
    "SessionEvent",
    "TextDelta",
    "ToolCall",
    "ToolCallRequest",
    "ToolCalled",
    "ToolOutcome",
    "ToolResultEvent",
    "ToolRunner",
    "ToolSpec",
    "Transcript",
    "TurnCompleted",
    "TurnConfig",
    "TurnMetrics",
    "Usage",
    "UserSpeechStarted",
    "UserTranscript",
    "Utterance",
    "VADConfig",
    "VADResult",
    "VirtualClock",
    "VoiceSession",
    "frames",
    "is_backchannel",
    "read_wav",
    "rms_dbfs",
    "to_internal",
    "turn_summary",
    "write_wav",
]  # fmt: skip
