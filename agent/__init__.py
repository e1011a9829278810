"""The composition root: the CLI, transports and the wiring of providers, workflows and pipeline.

What a transport (the LiveKit worker, the control API, a test or a benchmark) needs to run calls:
prepare a Call with the process's ProviderPool, run it, watch it, end it.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._call import ENDED_BY_API, ENDED_BY_DRAIN, Call, CallRecord, CallSnapshot, Observer
    from ._load import LoadReport, run_load
    from ._providers import ProviderConfigError, ProviderPool, UnknownProviderError
    from ._recording import RecordingCall, call_from_recording, recording_call

# Imported on first use: `voicerun --help` loads this package and must not pay for the pipeline.
_EXPORTS = {
    "ENDED_BY_API": "._call",
    "ENDED_BY_DRAIN": "._call",
    "Call": "._call",
    "CallRecord": "._call",
    "CallSnapshot": "._call",
    "Observer": "._call",
    "LoadReport": "._load",
    "run_load": "._load",
    "ProviderConfigError": "._providers",
    "ProviderPool": "._providers",
    "UnknownProviderError": "._providers",
    "RecordingCall": "._recording",
    "call_from_recording": "._recording",
    "recording_call": "._recording",
}

__all__ = [
    "ENDED_BY_API",
    "ENDED_BY_DRAIN",
    "Call",
    "CallRecord",
    "CallSnapshot",
    "LoadReport",
    "Observer",
    "ProviderConfigError",
    "ProviderPool",
    "RecordingCall",
    "UnknownProviderError",
    "call_from_recording",
    "recording_call",
    "run_load",
]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'agent' has no attribute {name!r}")
    return getattr(import_module(_EXPORTS[name], __name__), name)
