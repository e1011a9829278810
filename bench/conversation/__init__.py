"""The conversation benchmark: synthetic callers that talk over, pause in and cut off a long-winded
agent, run through `voicerun run --fast`, scored from the call audio (docs/benchmarks.md)."""
