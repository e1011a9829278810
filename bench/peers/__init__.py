"""The peer benchmark: bench/overhead.py's workload on voicerun, LiveKit Agents' AgentSession and
Pipecat, each peer in its own pinned virtual environment, runs interleaved in fresh processes
(bench/peers/README.md)."""
