"""The call report (shaped after the call, transcript and metrics objects of the calls API) and
the latency table printed after `voicerun run`."""

from __future__ import annotations

import os
import statistics
from dataclasses import asdict
from functools import cache
from pathlib import Path
from typing import Any

from metering import PriceCatalog, cost_breakdown, load_catalog
from pipeline import TurnMetrics, turn_summary

from ._call import CallRecord


def report_dict(record: CallRecord) -> dict[str, Any]:
    summary = record.summary
    turns = list(summary.turns) if summary else []
    means = turn_summary(turns)
    usage = asdict(summary.usage) if summary else {}
    return {
        "call_id": record.call_id,
        "workflow_slug": record.workflow_slug,
        "status": record.status,
        "ended_reason": summary.reason if summary else None,
        "started_at": record.started_at.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "duration_seconds": round(summary.duration_s, 3) if summary else None,
        "agent_history": record.agent_history,
        "current_agent": record.current_agent,
        "transcript": record.transcript,
        "metrics": {
            "duration_seconds": round(summary.duration_s, 3) if summary else None,
            "stt_latency_ms": means["stt_latency_ms"],
            "llm_latency_ms": means["llm_latency_ms"],
            "tts_latency_ms": means["tts_latency_ms"],
            "e2e_latency_ms": means["e2e_latency_ms"],
            "total_tokens": usage.get("llm_prompt_tokens", 0) + usage.get("llm_completion_tokens", 0),
            "agent_handoffs": record.handoffs,
            "turns": [asdict(t) for t in turns],
        },
        "usage": {k: round(v, 3) if isinstance(v, float) else v for k, v in usage.items()},
        "faults": record.faults,
        "cost_breakdown": _costs(record),
    }


@cache
def price_catalog() -> PriceCatalog:
    """The process's price catalog: the default one, with `VOICERUN_PRICES` merged over it."""
    path = os.environ.get("VOICERUN_PRICES")
    return load_catalog(Path(path) if path else None)


def _costs(record: CallRecord) -> dict[str, object] | None:
    if record.summary is None:
        return None
    return cost_breakdown(
        record.usage_lines,
        call_seconds=record.summary.duration_s,
        telephony=None,  # recordings, rooms and browsers have no phone line yet
        catalog=price_catalog(),
    )


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.0f}"


def latency_table(turns: list[TurnMetrics]) -> str:
    cols = ("eou_delay_ms", "stt_latency_ms", "llm_ttft_ms", "tts_ttfb_ms", "e2e_latency_ms")
    heads = ("turn", "eou", "stt", "llm ttft", "tts ttfb", "e2e", "interrupted")
    rows = [
        (str(i + 1), *(_fmt(getattr(t, c)) for c in cols), "yes" if t.interrupted else "")
        for i, t in enumerate(turns)
    ]
    e2e = [t.e2e_latency_ms for t in turns if t.e2e_latency_ms is not None]
    if e2e:
        rows.append(("median", "", "", "", "", f"{statistics.median(e2e):.0f}", ""))
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(heads)]
    line = "  ".join(h.rjust(w) for h, w in zip(heads, widths, strict=True))
    body = ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return (
        "\n".join([line, *body])
        + "\n(milliseconds; e2e = caller's last voiced audio -> first agent audio out)"
    )


def transcript_text(record: CallRecord) -> str:
    lines = []
    for e in record.transcript:
        if e["role"] == "system":
            continue
        if "tool_call" in e:
            lines.append(
                f"  [tool] {e['tool_call']['name']}({e['tool_call']['arguments']}) -> {e['tool_result']}"
            )
            continue
        who = "caller" if e["role"] == "user" else "agent "
        note = " (backchannel)" if e.get("backchannel") else " (interrupted)" if e.get("interrupted") else ""
        lines.append(f"  {who}: {e['content']}{note}")
    return "\n".join(lines)
