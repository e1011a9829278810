"""The runs folded into one row per framework and calls count (medians over repeats), as markdown."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from .frameworks import expected_turns
from .runs import Run


@dataclass
class Row:
    framework: str
    calls: int
    runs: int
    measured: int
    turns: float | None
    expected_turns: int
    p50_ms: float | None
    p95_ms: float | None
    cpu_s_per_call_s: float | None
    rss_mb: float | None
    mb_per_extra_call: float | None
    notes: str


def _note(run: Run, limit: int = 120) -> str:
    note = run.detail if run.status == "unanswered" else f"{run.status}: {run.detail}"
    return note if len(note) <= limit else note[: limit - 1] + "…"  # the whole of it is in results.json


def _median(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def summarize(runs: Sequence[Run], frameworks: Sequence[str], calls: Sequence[int]) -> list[Row]:
    rows: list[Row] = []
    for n in calls:
        for name in frameworks:
            mine = [r for r in runs if r.framework == name and r.calls == n]
            results = [r.result for r in mine if r.result is not None]
            notes = "; ".join(f"repeat {r.repeat}: {_note(r)}" for r in mine if r.status != "ok")
            rows.append(
                Row(
                    framework=name,
                    calls=n,
                    runs=len(mine),
                    measured=len(results),
                    turns=_median([float(x["turns"]) for x in results]),
                    expected_turns=expected_turns(n),
                    p50_ms=_median([x.get("p50_ms") for x in results]),
                    p95_ms=_median([x.get("p95_ms") for x in results]),
                    cpu_s_per_call_s=_median([x.get("cpu_s_per_call_s") for x in results]),
                    rss_mb=_median([x.get("rss_mb") for x in results]),
                    mb_per_extra_call=None,
                    notes=notes,
                )
            )
    _fill_memory_per_call(rows)
    return rows


def _fill_memory_per_call(rows: list[Row]) -> None:
    """Peak RSS growth per extra call against the framework's smallest measured calls count; every
    run is a fresh process, so the difference is what the extra calls cost."""
    for name in {r.framework for r in rows}:
        measured = sorted(
            (r for r in rows if r.framework == name and r.rss_mb is not None), key=lambda r: r.calls
        )
        if not measured:
            continue
        base = measured[0]
        assert base.rss_mb is not None
        for row in measured[1:]:
            assert row.rss_mb is not None
            row.mb_per_extra_call = (row.rss_mb - base.rss_mb) / (row.calls - base.calls)


def _ms(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value:.2f} ms" if value < 10 else f"{value:.1f} ms" if value < 100 else f"{value:.0f} ms"


def _num(value: float | None, digits: int, unit: str = "") -> str:
    return "—" if value is None else f"{value:.{digits}f}{unit}"


LEGEND = (
    "overhead = first reply frame at the output - end of the caller's speech - 300 ms, per turn; "
    "medians over the repeats, each run a fresh process; MB per extra call against the "
    "framework's smallest calls count (bench/peers/README.md)."
)


def markdown(rows: Sequence[Row], machine_line: str) -> str:
    lines = [
        machine_line,
        "",
        "| calls | framework | turns answered | overhead p50 | overhead p95 | CPU s per call-second "
        "| MB per extra call | notes |",
        "|---:|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        turns = "—" if r.turns is None else f"{r.turns:.0f}/{r.expected_turns}"
        lines.append(
            f"| {r.calls} | {r.framework} | {turns} | {_ms(r.p50_ms)} | {_ms(r.p95_ms)} "
            f"| {_num(r.cpu_s_per_call_s, 4)} | {_num(r.mb_per_extra_call, 2, ' MB')} | {r.notes} |"
        )
    lines += ["", LEGEND]
    return "\n".join(lines)
