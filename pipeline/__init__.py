"""voicerun's streaming voice pipeline: audio format, VAD, STT/LLM/TTS interfaces, turn-taking.

Imports nothing else of voicerun's; transports and workflows plug in from above.
"""

import os
import sys

# onnxruntime's telemetry (1DS, on Linux and macOS) creates a device id and an event database
# under ~/.cache/Microsoft the moment onnxruntime is imported, and queues them for upload: a write
# outside the paths a user gave. Only this variable, set before that import, stops it;
# disable_telemetry_events() comes too late. Every engine that loads onnxruntime (Hibari, the
# end-of-turn model) is reached through this package, so setting it here, first, covers them all.
os.environ["ORT_DISABLE_TELEMETRY"] = "1"
if "onnxruntime" in sys.modules:  # imported before us: stop what can still be stopped
    sys.modules["onnxruntime"].disable_telemetry_events()

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
from ._dialogue import (
    ContextKeep,
    Conversation,
    Dialogue,
    EndCallEvent,
    FillerLookup,
    HandoffEvent,
    ReplyEvent,
    ToolOutcome,
    ToolResultEvent,
    ToolRunner,
    summarize,
)
from ._end_of_turn import (
    EndOfTurnConfig,
    EndOfTurnError,
    EndOfTurnModel,
    EndOfTurnPrediction,
    TurnDecision,
    closing_cue,
    decide_end_of_turn,
    doubtful_cue,
    loaded_end_of_turn_model,
    shared_end_of_turn_model,
    smart_turn_features,
    unfinished_cue,
)
from ._errors import AudioFormatError, PipelineError, ProviderError
from ._events import (
    AgentHandoff,
    AgentSpeech,
    Backchannel,
    CallEnded,
    PipelineFault,
    SessionEvent,
    ToolCalled,
    TurnCompleted,
    TurnMetrics,
    Usage,
    UsageRecorded,
    UserSpeechStarted,
    UserTranscript,
)
from ._executors import ENGINES, EngineExecutor
from ._llm import LLM, LLMEvent, LLMUsage, Message, TextDelta, ToolCall, ToolCallRequest, ToolSpec
from ._playout import AudioSink, BufferedSink, Playback, Playout
from ._reframe import InboundReframer, OutboundReframer
from ._session import (
    DEFAULT_BACKCHANNELS,
    AgentVoice,
    CallerAudio,
    CallSummary,
    SessionConfig,
    TurnConfig,
    VoiceSession,
    turn_summary,
)
from ._stt import STT, InterimCallback, STTSession, Transcript, Utterance
from ._text import Clause, OverlapDecision, SentenceSplitter, classify_overlap, is_backchannel
from ._tts import TTS, Synthesis
from ._vad import Endpointer, VADConfig, VADResult

__all__ = [
    "DEFAULT_BACKCHANNELS",
    "ENGINES",
    "FRAME_BYTES",
    "FRAME_MS",
    "FRAME_S",
    "FRAME_SAMPLES",
    "LLM",
    "SAMPLE_RATE",
    "STT",
    "TTS",
    "AgentHandoff",
    "AgentSpeech",
    "AgentVoice",
    "AudioFormatError",
    "AudioSink",
    "Backchannel",
    "BufferedSink",
    "CallEnded",
    "CallSummary",
    "CallerAudio",
    "Clause",
    "Clock",
    "ContextKeep",
    "Conversation",
    "Dialogue",
    "EndCallEvent",
    "EndOfTurnConfig",
    "EndOfTurnError",
    "EndOfTurnModel",
    "EndOfTurnPrediction",
    "Endpointer",
    "EngineExecutor",
    "FillerLookup",
    "HandoffEvent",
    "InboundReframer",
    "Int16Array",
    "InterimCallback",
    "LLMEvent",
    "LLMUsage",
    "Message",
    "OutboundReframer",
    "OverlapDecision",
    "PipelineError",
    "PipelineFault",
    "Playback",
    "Playout",
    "ProviderError",
    "RealClock",
    "ReplyEvent",
    "STTSession",
    "SentenceSplitter",
    "SessionConfig",
    "SessionEvent",
    "Synthesis",
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
    "TurnDecision",
    "TurnMetrics",
    "Usage",
    "UsageRecorded",
    "UserSpeechStarted",
    "UserTranscript",
    "Utterance",
    "VADConfig",
    "VADResult",
    "VirtualClock",
    "VoiceSession",
    "classify_overlap",
    "closing_cue",
    "decide_end_of_turn",
    "doubtful_cue",
    "frames",
    "is_backchannel",
    "loaded_end_of_turn_model",
    "read_wav",
    "rms_dbfs",
    "shared_end_of_turn_model",
    "smart_turn_features",
    "summarize",
    "to_internal",
    "turn_summary",
    "unfinished_cue",
    "write_wav",
]  # fmt: skip
