"""The script of one benchmark call: what the caller says when, what the agent was planned to say.

Written next to the caller WAV by the generator; the scorer reads it with CALL.wav and REPORT.json
and nothing else. Times are seconds from the start of the call (sample 0 of the WAVs).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

SCRIPT_VERSION = 1

Kind = Literal["question", "fast_finish", "paused_sentence", "backchannel", "barge_in"]
KINDS: tuple[str, ...] = get_args(Kind)


class ScriptError(Exception):
    """A script file that cannot be used (missing, not JSON, wrong shape)."""


@dataclass(frozen=True, slots=True)
class Part:
    start_s: float
    end_s: float
    text: str


@dataclass(frozen=True, slots=True)
class Segment:
    """One caller utterance. start_s/end_s bound its speech exactly (first and last audible sample)."""

    kind: Kind
    text: str
    start_s: float
    end_s: float
    parts: tuple[Part, ...] = ()
    """A paused sentence's two halves; the pause is between parts[0].end_s and parts[1].start_s."""
    over_reply: int | None = None
    """Index of the planned reply this utterance was placed over (backchannels, barge-ins)."""
    offset_s: float | None = None
    """How far into that planned reply it starts."""
    expects: str | None = None
    """The answer the agent's rules give to these words (None for backchannels)."""


@dataclass(frozen=True, slots=True)
class PlannedReply:
    answer: str
    start_s: float
    end_s: float
    cause: int | None
    """Index of the segment it answers; None for the greeting."""


@dataclass(frozen=True, slots=True)
class Script:
    call: str
    voice: str
    condition: str
    seed: int
    duration_s: float
    answers: dict[str, str]
    """Everything the agent can say, by answer id: the scorer tells replies apart by these words."""
    segments: tuple[Segment, ...]
    replies: tuple[PlannedReply, ...]
    reply_latency_s: float
    """The end-of-speech -> first agent audio the plan assumed (the real one is measured)."""
    version: int = SCRIPT_VERSION
    notes: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1) + "\n"

    def write(self, path: Path) -> None:
        path.write_text(self.to_json())


def load_script(path: Path) -> Script:
    try:
        raw = json.loads(path.read_text())
    except OSError as exc:
        raise ScriptError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except json.JSONDecodeError as exc:
        raise ScriptError(f"{path}: not JSON ({exc})") from None
    try:
        if raw.get("version") != SCRIPT_VERSION:
            raise ScriptError(f"{path}: script version {raw.get('version')!r}, expected {SCRIPT_VERSION}")
        segments = []
        for s in raw["segments"]:
            if s["kind"] not in KINDS:
                raise ScriptError(f"{path}: unknown segment kind {s['kind']!r}")
            parts = tuple(Part(float(p["start_s"]), float(p["end_s"]), str(p["text"])) for p in s["parts"])
            segments.append(
                Segment(
                    kind=s["kind"],
                    text=str(s["text"]),
                    start_s=float(s["start_s"]),
                    end_s=float(s["end_s"]),
                    parts=parts,
                    over_reply=s.get("over_reply"),
                    offset_s=s.get("offset_s"),
                    expects=s.get("expects"),
                )
            )
        replies = tuple(
            PlannedReply(str(r["answer"]), float(r["start_s"]), float(r["end_s"]), r.get("cause"))
            for r in raw["replies"]
        )
        return Script(
            call=str(raw["call"]),
            voice=str(raw["voice"]),
            condition=str(raw["condition"]),
            seed=int(raw["seed"]),
            duration_s=float(raw["duration_s"]),
            answers={str(k): str(v) for k, v in raw["answers"].items()},
            segments=tuple(segments),
            replies=replies,
            reply_latency_s=float(raw["reply_latency_s"]),
            notes=dict(raw.get("notes", {})),
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ScriptError(f"{path}: not a benchmark script ({type(exc).__name__}: {exc})") from None
