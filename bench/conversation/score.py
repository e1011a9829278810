"""Scores benchmark calls from what a caller would hear: CALL.wav, REPORT.json and the script only.

The agent channel is cut into spans of speech (audible 10 ms frames, bridged over pauses shorter
than a sentence gap). Each span is transcribed with the embedded Whisper and aligned to the
agent's known answers, which gives every span a label: which answer, and which of its words.
Whisper is reliable on the agent's clean synthetic speech, and only the answer and the rough word
position are needed, not exact words; spans too short to label (under ~2 words) stay unlabelled.
Every metric is defined on these spans and the script's exact caller timings (docs/benchmarks.md).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import re
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from difflib import SequenceMatcher
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
import soundfile as sf

from pipeline import FRAME_SAMPLES, SAMPLE_RATE, Int16Array

from .script import Script, ScriptError, Segment, load_script

HOP_S = 0.01
AUDIBLE_DBFS = -40.0
SPAN_GAP_S = 0.2
"""Silence that ends a span: a clause or sentence of the agent's (its pauses at commas last up to
0.43 s, between sentences 0.76-0.86 s), so a stale tail and the next reply are never one span."""
STOP_GAP_S = 0.5
"""The agent has stopped when it stays silent this long (the same bridge as a span)."""
MISSED_MS = 500.0
"""A barge-in is missed when the agent is still speaking this long after its onset."""
MID_REPLY_GAP_S = 0.9
"""An utterance is 'over the reply' if the agent spoke within this long before it (a sentence gap)."""
RESAY_WORDS = 3
"""A reply heard again from this many words before where it had got to is a restart."""


class ScoreError(Exception):
    """A call's files cannot be scored (missing, wrong format, or not matching the script)."""


class Transcriber(Protocol):
    async def __call__(self, pcm: Int16Array) -> str: ...


# -- words --------------------------------------------------------------------------------------

_ONES = "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen seventeen eighteen nineteen".split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()


def _number(n: int) -> str:
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10] + ("" if n % 10 == 0 else " " + _ONES[n % 10])
    return str(n)


def words(text: str) -> list[str]:
    """Lowercase words, numbers spelled out as the agent's lines spell them ("45" -> forty five)."""
    text = re.sub(r"\d+", lambda m: f" {_number(int(m.group()))} ", text.lower().replace("\u2019", "'"))
    return re.findall(r"[a-z']+", text)


# -- the agent channel --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Span:
    start_s: float
    end_s: float
    text: str = ""
    answer: str | None = None
    """The answer these words belong to; None when too short or unlike every answer."""
    w0: int = 0
    w1: int = 0
    """Word range [w0, w1) of that answer."""


def activity(x: Int16Array) -> npt.NDArray[np.bool_]:
    """Audible 10 ms hops of a channel."""
    hop = round(HOP_S * SAMPLE_RATE)
    n = x.size // hop
    peaks = np.abs(x[: n * hop].astype(np.int32)).reshape(n, hop).max(axis=1)
    return np.asarray(peaks > 32768 * 10 ** (AUDIBLE_DBFS / 20))


def spans(active: npt.NDArray[np.bool_], gap_s: float = SPAN_GAP_S) -> list[tuple[float, float]]:
    """(start, end) of audible stretches, joined across silences shorter than gap_s."""
    idx = np.flatnonzero(active)
    if not idx.size:
        return []
    breaks = np.flatnonzero(np.diff(idx) > round(gap_s / HOP_S))
    starts = [idx[0], *idx[breaks + 1]]
    ends = [*idx[breaks], idx[-1]]
    return [(round(s * HOP_S, 3), round((e + 1) * HOP_S, 3)) for s, e in zip(starts, ends, strict=True)]


def _dedupe(said: list[str]) -> list[str]:
    """Drop an n-gram Whisper repeats at once ("of course of course"), which it does on audio cut
    off mid-word; the repeat would otherwise count against the match."""
    out: list[str] = []
    for w in said:
        out.append(w)
        for n in range(1, 5):
            if len(out) >= 2 * n and out[-n:] == out[-2 * n : -n]:
                del out[-n:]
                break
    return out


def label(text: str, answers: dict[str, list[str]], prefer: str | None = None) -> tuple[str | None, int, int]:
    """The answer whose words best explain these, and where in it they fall.

    Runs of two or more words in order count; lone common words ("the", "for") barely do. Within
    one word of the best, `prefer` (the answer being spoken just before) wins: a short clause can
    match two answers, and the agent rarely changes answer mid-stream.
    """
    said = _dedupe(words(text))
    if len(said) < 2:
        return None, 0, 0
    scored = []
    for answer, ref in answers.items():
        blocks = [b for b in SequenceMatcher(None, ref, said, autojunk=False).get_matching_blocks() if b.size]
        weight = sum(b.size if b.size >= 2 else 0.25 for b in blocks)
        matched = sum(b.size for b in blocks)
        scored.append((weight, matched, answer, blocks))
    scored.sort(key=lambda x: -x[0])
    weight, matched, answer, blocks = scored[0]
    if prefer is not None:
        alt = next((x for x in scored if x[2] == prefer), None)
        if alt is not None and alt[0] >= weight - 1.0:
            weight, matched, answer, blocks = alt
    if weight < 2 or matched < 0.5 * len(said):
        return None, 0, 0
    anchors = [b for b in blocks if b.size >= 2] or blocks
    return answer, anchors[0].a, anchors[-1].a + anchors[-1].size


# -- one call -----------------------------------------------------------------------------------


@dataclass(slots=True)
class CallScore:
    call: str
    voice: str
    condition: str
    barge_ins: list[dict[str, Any]] = field(default_factory=list)
    backchannels: list[dict[str, Any]] = field(default_factory=list)
    pauses: list[dict[str, Any]] = field(default_factory=list)
    latencies: list[dict[str, Any]] = field(default_factory=list)
    agent_spans: list[dict[str, Any]] = field(default_factory=list)
    faults: list[str] = field(default_factory=list)
    """The report's pipeline faults: a call with any measured a broken run, not turn-taking."""


def read_call(path: Path) -> tuple[Int16Array, Int16Array]:
    try:
        data, rate = sf.read(path, dtype="int16", always_2d=True)
    except (OSError, sf.LibsndfileError) as exc:
        raise ScoreError(f"{path}: cannot read ({exc})") from None
    if rate != SAMPLE_RATE or data.shape[1] != 2:
        raise ScoreError(f"{path}: expected 2 channels at {SAMPLE_RATE} Hz, got {data.shape[1]} at {rate} Hz")
    return np.ascontiguousarray(data[:, 0]), np.ascontiguousarray(data[:, 1])


def read_report(path: Path) -> dict[str, Any]:
    try:
        report = json.loads(path.read_text())
    except OSError as exc:
        raise ScoreError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except json.JSONDecodeError as exc:
        raise ScoreError(f"{path}: not JSON ({exc})") from None
    if not isinstance(report, dict) or not isinstance(report.get("transcript"), list):
        raise ScoreError(f"{path}: not a voicerun report (no transcript)")
    return report


def _ts(raw: str) -> dt.datetime:
    return dt.datetime.fromisoformat(raw.replace("Z", "+00:00"))


def user_turn_times(report: dict[str, Any], first_agent_audio_s: float | None) -> list[tuple[float, str]]:
    """(call time, text) of each caller transcript in the report.

    The report's clock starts before the recording does (providers load first), so it is aligned
    on the one moment both record: the agent's first spoken entry is stamped when its first frame
    went out, which is the first agent audio in CALL.wav.
    """
    entries = report["transcript"]
    first_agent = next((e for e in entries if e.get("role") == "assistant" and e.get("content")), None)
    if first_agent is None or first_agent_audio_s is None:
        return []
    offset = _ts(first_agent["timestamp"]) - dt.timedelta(seconds=first_agent_audio_s)
    return [
        ((_ts(e["timestamp"]) - offset).total_seconds(), str(e["content"]))
        for e in entries
        if e.get("role") == "user" and not e.get("backchannel")
    ]


class _Call:
    def __init__(
        self, script: Script, agent: Int16Array, agent_spans: list[Span], report: dict[str, Any]
    ) -> None:
        self.script = script
        self.active = activity(agent)
        self.spans = agent_spans
        self.answer_words = {k: words(v) for k, v in script.answers.items()}
        first = self.spans[0].start_s if self.spans else None
        self.user_turns = user_turn_times(report, first)
        starts = sorted(s.start_s for s in script.segments)
        self._starts = starts

    def window_end(self, seg: Segment) -> float:
        """Where what follows an utterance stops being its consequence: the next utterance."""
        later = [s for s in self._starts if s > seg.start_s + 1e-6]
        return later[0] if later else float("inf")

    def audible(self, t0: float, t1: float) -> bool:
        a, b = max(0, int(t0 / HOP_S)), max(0, int(np.ceil(t1 / HOP_S)))
        return bool(self.active[a:b].any())

    def stop_after(self, t: float) -> float:
        """When the agent audio that is going on at t (pauses < STOP_GAP_S included) ends."""
        gap = round(STOP_GAP_S / HOP_S)
        k = max(0, int(t / HOP_S))
        silent = ~self.active
        j = k
        while j < silent.size and not silent[j : j + gap].all():
            j += 1
        before = np.flatnonzero(self.active[max(0, k - gap) : j])
        if not before.size:
            return t
        return max(t, (max(0, k - gap) + int(before[-1]) + 1) * HOP_S)

    def reply_at(self, t: float) -> Span | None:
        """The labelled span of the reply the agent was in the middle of at t, if any.

        The agent is mid-reply when it was audible within a sentence gap before t and the answer
        it was saying had more to say. A clause too short to label takes the label of the
        speech it continues.
        """
        current = next(
            (s for s in reversed(self.spans) if s.start_s <= t + 0.05 and s.end_s >= t - MID_REPLY_GAP_S),
            None,
        )
        if current is None:
            return None
        k = self.spans.index(current)
        while (
            self.spans[k].answer is None
            and k > 0
            and self.spans[k].start_s - self.spans[k - 1].end_s <= MID_REPLY_GAP_S
        ):
            k -= 1
        found = self.spans[k]
        if found.answer is None:
            return None
        if current.end_s > t or found.w1 < len(self.answer_words[found.answer]) - 1:
            return found
        return None

    def heard_up_to(self, answer: str, t: float, since: float) -> int:
        """How far into `answer` the agent had got by t (spans of it starting in [since, t))."""
        return max((s.w1 for s in self.spans if s.answer == answer and since <= s.start_s < t), default=0)

    # -- events --

    def barge_in(self, seg: Segment) -> dict[str, Any]:
        at = self.reply_at(seg.start_s)
        out: dict[str, Any] = {"call": self.script.call, "onset_s": seg.start_s, "text": seg.text}
        if at is None:
            return {**out, "on_target": False}
        stop = self.stop_after(seg.start_s)
        end = self.window_end(seg)
        cancelled = at.answer
        after = [s for s in self.spans if stop <= s.start_s < end]
        # The reply to the barge-in: an answer from its first words once the caller has finished.
        # It may be the cancelled answer again (the rules' fallback answers a misheard barge-in
        # as it answered the question before): that is a new reply, not stale audio.
        reply = next((s for s in after if s.start_s >= seg.end_s and s.w0 <= RESAY_WORDS), None)
        stale = [s for s in after if s.answer == cancelled and (reply is None or s.start_s < reply.start_s)]
        first_reply = next((s for s in after if s.answer == seg.expects), None)
        # Audio after the stop that cannot be labelled and comes before the answer to the barge-in.
        cutoff = first_reply.start_s if first_reply else end
        unknown = [s for s in after if s.answer is None and s.start_s < cutoff]
        stop_ms = round((stop - seg.start_s) * 1000, 1)
        return {
            **out,
            "on_target": True,
            "answer": cancelled,
            "offset_into_answer_s": round(seg.start_s - self._reply_start(cancelled, seg.start_s), 3),
            "stop_ms": stop_ms,
            "missed": stop_ms > MISSED_MS,
            "stale_s": round(sum(s.end_s - s.start_s for s in stale), 3),
            "stale_text": " | ".join(s.text for s in stale),
            "unlabelled_after_stop_s": round(sum(s.end_s - s.start_s for s in unknown), 3),
            "reply_to_barge_in_ms": None
            if first_reply is None
            else round((first_reply.start_s - seg.end_s) * 1000),
        }

    def _reply_start(self, answer: str | None, t: float) -> float:
        """Where the agent's current saying of `answer` began (its opening words' span before t)."""
        start = t
        for s in self.spans:
            if s.start_s > t:
                break
            if s.answer == answer and s.w0 <= RESAY_WORDS:
                start = s.start_s
        return start

    def backchannel(self, seg: Segment) -> dict[str, Any]:
        at = self.reply_at(seg.start_s)
        out: dict[str, Any] = {"call": self.script.call, "onset_s": seg.start_s, "text": seg.text}
        if at is None or at.answer is None:
            return {**out, "on_target": False}
        answer = at.answer
        total = len(self.answer_words[answer])
        reached = self.heard_up_to(answer, seg.start_s, self._reply_start(answer, seg.start_s))
        end = self.window_end(seg)
        after = [s for s in self.spans if seg.start_s + 0.05 < s.start_s < end and s.answer is not None]
        restarted = any(s.answer == answer and s.w0 < reached - RESAY_WORDS for s in after)
        nxt = after[0] if after else None
        continued = (
            nxt is not None and nxt.answer == answer and nxt.w0 >= reached - RESAY_WORDS and not restarted
        )
        # It carried on to the end of the answer, or was still on it when the next utterance came.
        finished = any(s.answer == answer and s.w1 >= total - 2 for s in after) or (
            bool(after) and after[-1].answer == answer and end != float("inf")
        )
        if at.end_s > seg.start_s + 0.3 and at.w1 >= total - 2:
            finished = continued = True  # the reply was in its last words and simply ended
        silent_from = self._silence_start(seg.start_s)
        return {
            **out,
            "on_target": True,
            "answer": answer,
            "restarted": restarted,
            "cut": not restarted and not (continued and finished),
            "false_interruption": restarted or not (continued and finished),
            "paused": silent_from is not None,
            "next_text": "" if nxt is None else nxt.text,
        }

    def _silence_start(self, t: float) -> float | None:
        """Start of a silence of >= 0.3 s beginning within 0.35 s after t (the agent paused)."""
        k0, k1, n = int(t / HOP_S), int((t + 0.35) / HOP_S), round(0.3 / HOP_S)
        for k in range(k0, k1):
            if not self.active[k : k + n].any() and k + n <= self.active.size:
                return k * HOP_S
        return None

    def paused_sentence(self, seg: Segment) -> dict[str, Any]:
        first, second = seg.parts
        onsets = [s.start_s for s in self.spans if first.end_s < s.start_s <= second.start_s + 0.2]
        turns = [text for t, text in self.user_turns if seg.start_s <= t <= seg.end_s + 2.5]
        return {
            "call": self.script.call,
            "text": seg.text,
            "pause_s": round(second.start_s - first.end_s, 3),
            "agent_spoke_in_pause": bool(onsets),
            "report_turns": turns,
            "report_split": len(turns) >= 2,
            "split": bool(onsets) or len(turns) >= 2,
        }

    def latency(self, seg: Segment) -> dict[str, Any]:
        out: dict[str, Any] = {"call": self.script.call, "kind": seg.kind, "text": seg.text}
        if self.audible(seg.start_s - 0.5, seg.end_s):
            return {**out, "over_agent": True, "e2e_ms": None}
        end = self.window_end(seg)
        onset = next((s.start_s for s in self.spans if seg.end_s < s.start_s < end), None)
        return {
            **out,
            "over_agent": False,
            "e2e_ms": None if onset is None else round((onset - seg.end_s) * 1000, 1),
        }


async def transcribe_spans(agent: Int16Array, stretches: Iterable[tuple[float, float]],
                           transcribe: Transcriber, answers: dict[str, str]) -> list[Span]:  # fmt: skip
    ref = {k: words(v) for k, v in answers.items()}
    out: list[Span] = []
    for start, end in stretches:
        pcm = agent[round(start * SAMPLE_RATE) : round(end * SAMPLE_RATE)]
        text = await transcribe(pcm) if end - start >= 0.15 else ""
        previous = next((s.answer for s in reversed(out) if s.answer is not None), None)
        answer, w0, w1 = label(text, ref, previous)
        out.append(Span(start, end, text, answer, w0, w1))
    return out


async def score_call(call_wav: Path, report_json: Path, script: Script, transcribe: Transcriber) -> CallScore:
    _caller, agent = read_call(call_wav)
    report = read_report(report_json)
    agent_spans = await transcribe_spans(agent, spans(activity(agent)), transcribe, script.answers)
    call = _Call(script, agent, agent_spans, report)
    result = CallScore(script.call, script.voice, script.condition)
    result.agent_spans = [asdict(s) for s in agent_spans]
    result.faults = [str(f) for f in report.get("faults") or []]
    for seg in script.segments:
        if seg.kind == "barge_in":
            result.barge_ins.append(call.barge_in(seg))
        elif seg.kind == "backchannel":
            result.backchannels.append(call.backchannel(seg))
        elif seg.kind == "paused_sentence":
            result.pauses.append(call.paused_sentence(seg))
        else:
            result.latencies.append(call.latency(seg))
    return result


# -- Whisper ------------------------------------------------------------------------------------


class WhisperTranscriber:
    """The embedded Whisper (beam 5, no interims), one utterance per span."""

    def __init__(self) -> None:
        from pipeline.providers import WhisperConfig, WhisperSTT

        self._stt = WhisperSTT(WhisperConfig(beam_size=5, interim_interval_s=0))
        self._session: Any = None

    async def __call__(self, pcm: Int16Array) -> str:
        if self._session is None:
            self._session = await self._stt.connect()
        utt = self._session.begin()
        padded = np.concatenate([pcm, np.zeros(-pcm.size % FRAME_SAMPLES, np.int16)])
        for k in range(0, padded.size, FRAME_SAMPLES):
            utt.push(padded[k : k + FRAME_SAMPLES].tobytes(), True)
        return str((await utt.finalize()).text)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.aclose()


# -- the table ----------------------------------------------------------------------------------


def _pct(n: int, d: int) -> str:
    return "-" if d == 0 else f"{100 * n / d:.0f}%"


def _q(values: Sequence[float], q: float) -> str:
    return "-" if not values else f"{float(np.percentile(values, q)):.0f}"


def summarize(scores: Sequence[CallScore]) -> dict[str, Any]:
    barge = [b for s in scores for b in s.barge_ins if b["on_target"]]
    bc = [b for s in scores for b in s.backchannels if b["on_target"]]
    pauses = [p for s in scores for p in s.pauses]
    lat = [x for s in scores for x in s.latencies if not x["over_agent"]]
    e2e = [x["e2e_ms"] for x in lat if x["e2e_ms"] is not None and x["e2e_ms"] > 0]
    stops = [b["stop_ms"] for b in barge]
    return {
        "calls": len(scores),
        "barge_ins": len(barge),
        "barge_ins_off_target": sum(1 for s in scores for b in s.barge_ins if not b["on_target"]),
        "stop_p50_ms": float(np.percentile(stops, 50)) if stops else None,
        "stop_p95_ms": float(np.percentile(stops, 95)) if stops else None,
        "stop_within_100ms": sum(1 for x in stops if x <= 100),
        "missed": sum(1 for b in barge if b["missed"]),
        "stale_events": sum(1 for b in barge if b["stale_s"] > 0),
        "stale_s": round(sum(b["stale_s"] for b in barge), 2),
        "unlabelled_after_stop_s": round(sum(b["unlabelled_after_stop_s"] for b in barge), 2),
        "barge_in_offset_p50_s": statistics.median([b["offset_into_answer_s"] for b in barge])
        if barge
        else None,
        "backchannels": len(bc),
        "backchannels_off_target": sum(1 for s in scores for b in s.backchannels if not b["on_target"]),
        "false_interruptions": sum(1 for b in bc if b["false_interruption"]),
        "restarts": sum(1 for b in bc if b["restarted"]),
        "bc_paused": sum(1 for b in bc if b["paused"]),
        "pauses": len(pauses),
        "split": sum(1 for p in pauses if p["split"]),
        "spoke_in_pause": sum(1 for p in pauses if p["agent_spoke_in_pause"]),
        "latency_n": len(e2e),
        "latency_early_or_none": len(lat) - len(e2e),
        "e2e_p50_ms": statistics.median(e2e) if e2e else None,
        "e2e_p95_ms": float(np.percentile(e2e, 95)) if e2e else None,
    }


HEADS = ("", "calls", "barge-ins", "stop p50", "stop p95", "<=100ms", "missed", "stale", "stale s",
         "backch.", "false int.", "restarts", "paused", "pauses", "split", "e2e n", "e2e p50", "e2e p95")  # fmt: skip


def _row(name: str, m: dict[str, Any]) -> list[str]:
    def ms(v: float | None) -> str:
        return "-" if v is None else f"{v:.0f}"

    return [
        name, str(m["calls"]), str(m["barge_ins"]), ms(m["stop_p50_ms"]), ms(m["stop_p95_ms"]),
        _pct(m["stop_within_100ms"], m["barge_ins"]), _pct(m["missed"], m["barge_ins"]),
        _pct(m["stale_events"], m["barge_ins"]), f"{m['stale_s']:.1f}",
        str(m["backchannels"]), _pct(m["false_interruptions"], m["backchannels"]),
        str(m["restarts"]), _pct(m["bc_paused"], m["backchannels"]),
        str(m["pauses"]), _pct(m["split"], m["pauses"]),
        str(m["latency_n"]), ms(m["e2e_p50_ms"]), ms(m["e2e_p95_ms"]),
    ]  # fmt: skip


def groups(scores: Sequence[CallScore]) -> list[tuple[str, list[CallScore]]]:
    conditions = sorted(
        {s.condition for s in scores}, key=lambda c: ("clean", "noise-50", "noise-40", "tel8k", c).index(c)
    )
    voices = sorted({s.voice for s in scores})
    return [
        *((c, [s for s in scores if s.condition == c]) for c in conditions),
        *((v, [s for s in scores if s.voice == v]) for v in voices),
        ("overall", list(scores)),
    ]


def table(scores: Sequence[CallScore], markdown: bool = False) -> str:
    rows = [_row(name, summarize(group)) for name, group in groups(scores)]
    if markdown:
        lines = ["| " + " | ".join(HEADS) + " |", "|" + "---|" * len(HEADS)]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(lines)
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(HEADS)]
    fmt = [h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(HEADS, widths, strict=True))]
    lines = ["  ".join(fmt)]
    for r in rows:
        lines.append(
            "  ".join(
                c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))
            )
        )
    return "\n".join(lines)


LEGEND = """\
barge-ins: real interruptions that landed on agent speech; stop p50/p95: onset -> last agent audio (ms);
<=100ms: share stopped within 100 ms; missed: still speaking 500 ms after the onset; stale: barge-ins after
which audio of the cancelled answer was heard again (stale s: its total seconds); backch.: backchannels over
agent speech; false int.: the reply was cut or restarted; restarts: heard again from its start; paused: the
agent fell silent (>= 0.3 s) right after the backchannel; pauses: mid-sentence pauses; split: the agent spoke
into the pause or the report split the sentence; e2e: caller's end of speech -> first agent audio (ms),
complete questions spoken into silence."""


async def score_runs(pairs: Sequence[tuple[Path, Path]], transcribe: Transcriber) -> list[CallScore]:
    """(corpus call dir, run call dir) -> scores; a call that cannot be scored is named and skipped."""
    out = []
    for corpus_dir, run_dir in pairs:
        try:
            script = load_script(corpus_dir / "script.json")
            out.append(await score_call(run_dir / "CALL.wav", run_dir / "REPORT.json", script, transcribe))
        except (ScoreError, ScriptError) as exc:  # one bad call never loses the others
            print(f"score {run_dir.name}: skipped: {exc}")
    return out


def run_scores(pairs: Sequence[tuple[Path, Path]]) -> list[CallScore]:
    async def go() -> list[CallScore]:
        whisper = WhisperTranscriber()
        try:
            return await score_runs(pairs, whisper)
        finally:
            await whisper.aclose()

    return asyncio.run(go())
