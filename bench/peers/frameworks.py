"""The three frameworks the harness runs, and the command line of each run."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PEERS = Path(__file__).resolve().parent

# bench/overhead.py repeats small runs until they give 50 turns (its --min-turns default); the
# peers are told the same, so every framework times the same number of turns.
MIN_TURNS = 50
CYCLES_PER_CALL = 5
CALL_S = 15.0


def voicerun_command(calls: int) -> list[str]:
    """The one place voicerun's run is defined: bench/overhead.py under the repo's venv."""
    return [str(REPO / ".venv/bin/python"), str(REPO / "bench/overhead.py"), "--calls", str(calls), "--json"]


@dataclass(frozen=True)
class Framework:
    name: str
    requirements: Path | None
    """The peer's pins; None for voicerun, which runs in the repo's own venv."""
    runner: Path | None = None

    def command(self, python: Path | None, calls: int) -> list[str]:
        if self.runner is None:
            return voicerun_command(calls)
        assert python is not None
        return [str(python), str(self.runner), "--calls", str(calls), "--min-turns", str(MIN_TURNS)]


VOICERUN = Framework("voicerun", None)
LIVEKIT = Framework(
    "livekit-agents",
    PEERS / "requirements-livekit-agents.txt",
    PEERS / "runners/livekit_agents_peer.py",
)
PIPECAT = Framework("pipecat-ai", PEERS / "requirements-pipecat-ai.txt", PEERS / "runners/pipecat_peer.py")
FRAMEWORKS = {f.name: f for f in (VOICERUN, LIVEKIT, PIPECAT)}


def rounds(calls: int) -> int:
    """How many times over a run repeats its calls to reach MIN_TURNS, as bench/overhead.py does."""
    return max(1, -(-MIN_TURNS // (calls * CYCLES_PER_CALL)))


def expected_turns(calls: int) -> int:
    return rounds(calls) * calls * CYCLES_PER_CALL


def default_timeout_s(calls: int) -> float:
    """Twice the run's own length plus a minute for imports, start-up and a loaded machine."""
    return 2 * rounds(calls) * CALL_S + 60
