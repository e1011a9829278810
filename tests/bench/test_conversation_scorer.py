"""The conversation benchmark's scorer, on hand-made calls whose right answers are known: agent
speech placed by hand (Hibari, the benchmark's real answers), scored through the embedded Whisper
exactly as `make bench-conversation` scores."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
import pytest_asyncio

from bench.conversation.corpus import WORKFLOW, answers
from bench.conversation.score import (
    CallScore,
    ScoreError,
    WhisperTranscriber,
    activity,
    label,
    score_call,
    spans,
    words,
)
from bench.conversation.script import Kind, Part, PlannedReply, Script, ScriptError, Segment, load_script
from pipeline import SAMPLE_RATE, Int16Array, to_internal, write_wav
from workflows import load_workflow

ANSWERS = answers(load_workflow(WORKFLOW))
SR = SAMPLE_RATE


def sentences(text: str) -> list[str]:
    return [s for s in re.split(r"(?<=[.?!])\s+", text) if s]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def say() -> dict[str, Int16Array]:
    """Each sentence of the answers used here, spoken as the agent speaks (Hibari, trimmed)."""
    from hibari import Hibari

    from bench.conversation.corpus import trim

    engine = await asyncio.to_thread(Hibari)
    out = {}
    for answer in ("deliver", "human", "fallback"):
        for s in sentences(ANSWERS[answer]):
            out[s] = trim(to_internal(engine(s, seed=11), 24_000), -40.0)
    return out


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def whisper() -> AsyncIterator[WhisperTranscriber]:
    w = WhisperTranscriber()
    yield w
    await w.aclose()


class Call:
    """A hand-made call: agent audio placed at chosen times, caller lines in the script."""

    def __init__(self, say: dict[str, Int16Array], length_s: float = 40.0) -> None:
        self.say = say
        self.agent = np.zeros(int(length_s * SR), np.int16)
        self.segments: list[Segment] = []
        self.user_turns: list[tuple[float, str]] = []

    def agent_says(
        self, at_s: float, text: str, *, cut_at_s: float | None = None, skip_s: float = 0.0
    ) -> float:
        """Place a sentence (from skip_s into it, cut off at cut_at_s); returns where it ends."""
        x = self.say[text][round(skip_s * SR) :]
        if cut_at_s is not None:
            x = x[: round((cut_at_s - at_s) * SR)]
        k = round(at_s * SR)
        self.agent[k : k + x.size] = x
        return at_s + x.size / SR

    def agent_answer(self, at_s: float, answer: str, first: int = 0, last: int | None = None) -> float:
        t = at_s
        for s in sentences(ANSWERS[answer])[first:last]:
            t = self.agent_says(t, s) + 0.8
        return t

    def caller(self, kind: Kind, text: str, start: float, end: float, *, parts: tuple[Part, ...] = (),
               expects: str | None = None) -> None:  # fmt: skip
        self.segments.append(Segment(kind, text, start, end, parts, None, None, expects))

    async def score(self, tmp: Path, whisper: WhisperTranscriber) -> CallScore:
        write_wav(tmp / "CALL.wav", [np.zeros_like(self.agent), self.agent])
        first = float(np.flatnonzero(activity(self.agent))[0]) * 0.01

        def stamp(t: float) -> str:
            t += 100.0  # the report's clock runs ahead of the recording's, as in a real call
            return f"2026-01-01T00:{int(t // 60):02d}:{t % 60:06.3f}Z"

        transcript = [{"role": "assistant", "content": "...", "timestamp": stamp(first)}]
        transcript += [
            {"role": "user", "content": text, "timestamp": stamp(t)} for t, text in self.user_turns
        ]
        (tmp / "REPORT.json").write_text(json.dumps({"started_at": stamp(-1), "transcript": transcript}))
        script = Script("test", "hibari", "clean", 1, len(self.agent) / SR, ANSWERS, tuple(self.segments),
                        (PlannedReply("deliver", 1.0, 18.0, None),), 0.35)  # fmt: skip
        return await score_call(tmp / "CALL.wav", tmp / "REPORT.json", script, whisper)


DELIVER = sentences(ANSWERS["deliver"])
BARGE = "Stop. I want to speak to a human, please."


# -- barge-ins ----------------------------------------------------------------------------------


@pytest.mark.parametrize("stale", [False, True])
async def test_barge_in_stop_latency_and_stale_tail(stale: bool, say: dict[str, Int16Array], whisper: WhisperTranscriber, tmp_path: Path) -> None:  # fmt: skip
    call = Call(say)
    call.agent_says(1.0, DELIVER[0], cut_at_s=2.28)  # stopped 80 ms after the onset at 2.2
    call.caller("barge_in", BARGE, 2.2, 5.2, expects="human")
    t = 6.0
    if stale:  # the cancelled answer's last sentence plays after the stop
        t = call.agent_says(t, DELIVER[-1]) + 0.8
    call.agent_answer(t, "human", last=1)
    (b,) = (await call.score(tmp_path, whisper)).barge_ins
    assert b["on_target"] and b["answer"] == "deliver"
    assert b["stop_ms"] == pytest.approx(80, abs=15) and not b["missed"]
    if stale:
        assert b["stale_s"] == pytest.approx(len(say[DELIVER[-1]]) / SR, abs=0.3)
        assert "cash" in b["stale_text"].lower()
    else:
        assert b["stale_s"] == 0
    assert b["reply_to_barge_in_ms"] == pytest.approx((t - 5.2) * 1000, abs=30)


@pytest.mark.parametrize("after_caller", [True, False])
async def test_the_same_answer_from_its_start_is_a_reply_once_the_caller_has_finished(after_caller: bool, say: dict[str, Int16Array], whisper: WhisperTranscriber, tmp_path: Path) -> None:  # fmt: skip
    # The rules answer a misheard barge-in with the answer it cut (the fallback both times): that
    # new reply is not stale. Started again while the caller still speaks, it is.
    call = Call(say)
    call.agent_says(1.0, DELIVER[0], cut_at_s=2.28)
    call.caller("barge_in", BARGE, 2.2, 5.2, expects="human")
    call.agent_answer(6.0 if after_caller else 3.0, "deliver", last=2)
    (b,) = (await call.score(tmp_path, whisper)).barge_ins
    assert (b["stale_s"] > 0) == (not after_caller)


async def test_missed_barge_in(
    say: dict[str, Int16Array], whisper: WhisperTranscriber, tmp_path: Path
) -> None:
    call = Call(say)
    call.agent_says(1.0, DELIVER[0], cut_at_s=3.8)  # 1.6 s after the onset
    call.caller("barge_in", BARGE, 2.2, 5.2, expects="human")
    call.agent_answer(6.0, "human", last=1)
    (b,) = (await call.score(tmp_path, whisper)).barge_ins
    assert b["missed"] and b["stop_ms"] == pytest.approx(1600, abs=15)


async def test_barge_in_into_silence_is_off_target(say: dict[str, Int16Array], whisper: WhisperTranscriber, tmp_path: Path) -> None:  # fmt: skip
    call = Call(say)
    end = call.agent_says(1.0, DELIVER[-1])  # the answer's last sentence, then silence
    call.caller("barge_in", BARGE, end + 2.0, end + 5.0, expects="human")
    call.agent_answer(end + 6.0, "human", last=1)
    (b,) = (await call.score(tmp_path, whisper)).barge_ins
    assert b["on_target"] is False


# -- backchannels -------------------------------------------------------------------------------


async def test_backchannel_paused_and_resumed_is_not_an_interruption(say: dict[str, Int16Array], whisper: WhisperTranscriber, tmp_path: Path) -> None:  # fmt: skip
    call = Call(say)
    # The agent pauses 60 ms after "mhm" and resumes 0.9 s later exactly where it stopped.
    call.agent_says(1.0, DELIVER[0], cut_at_s=2.56)
    t = call.agent_says(3.46, DELIVER[0], skip_s=1.56) + 0.8
    call.agent_answer(t, "deliver", first=1)
    call.caller("backchannel", "mhm", 2.5, 2.8)
    (b,) = (await call.score(tmp_path, whisper)).backchannels
    assert b["on_target"] and b["answer"] == "deliver"
    assert not b["false_interruption"] and not b["restarted"] and not b["cut"]
    assert b["paused"]


async def test_backchannel_talked_through_is_not_paused(say: dict[str, Int16Array], whisper: WhisperTranscriber, tmp_path: Path) -> None:  # fmt: skip
    call = Call(say)
    call.agent_answer(1.0, "deliver")
    call.caller("backchannel", "uh-huh", 2.5, 2.9)
    (b,) = (await call.score(tmp_path, whisper)).backchannels
    assert b["on_target"] and not b["false_interruption"] and not b["paused"]


async def test_backchannel_that_restarts_the_reply(say: dict[str, Int16Array], whisper: WhisperTranscriber, tmp_path: Path) -> None:  # fmt: skip
    call = Call(say)
    call.agent_says(1.0, DELIVER[0])
    t = call.agent_says(1.0 + len(say[DELIVER[0]]) / SR + 0.8, DELIVER[1], cut_at_s=None)
    call.caller("backchannel", "okay", t - 0.6, t - 0.2)
    call.agent_answer(t + 1.5, "deliver", last=2)  # the answer again, from its first word
    (b,) = (await call.score(tmp_path, whisper)).backchannels
    assert b["false_interruption"] and b["restarted"]


async def test_backchannel_that_cuts_the_reply(say: dict[str, Int16Array], whisper: WhisperTranscriber, tmp_path: Path) -> None:  # fmt: skip
    call = Call(say)
    call.agent_says(1.0, DELIVER[0], cut_at_s=2.56)
    call.caller("backchannel", "yeah", 2.5, 2.8)
    call.agent_answer(4.0, "fallback", last=2)  # "yeah" heard as a question: a different reply
    (b,) = (await call.score(tmp_path, whisper)).backchannels
    assert b["false_interruption"] and b["cut"] and not b["restarted"]


# -- mid-sentence pauses and latency --------------------------------------------------------------


@pytest.mark.parametrize(("agent_at", "user_turns", "split"), [
    (4.2, [(3.9, "My order number is four five six.")], False),
    (2.35, [(2.4, "My order number is."), (3.8, "4 5 6")], True),  # spoke into the pause
    (None, [(2.4, "My order number is."), (3.8, "4 5 6")], True),  # the report split it
])  # fmt: skip
async def test_paused_sentence(agent_at: float | None, user_turns: list[tuple[float, str]], split: bool,
                               say: dict[str, Int16Array], whisper: WhisperTranscriber, tmp_path: Path) -> None:  # fmt: skip
    call = Call(say)
    call.agent_says(0.2, DELIVER[3], cut_at_s=0.9)  # something before, to align the report on
    parts = (Part(1.0, 2.0, "My order number is"), Part(2.6, 3.4, "four five six."))
    call.caller(
        "paused_sentence", "My order number is four five six.", 1.0, 3.4, parts=parts, expects="order"
    )
    if agent_at is not None:
        call.agent_answer(agent_at, "fallback", last=1)
    call.user_turns = user_turns
    (p,) = (await call.score(tmp_path, whisper)).pauses
    assert p["split"] is split
    assert p["agent_spoke_in_pause"] is (agent_at is not None and agent_at < 2.8)
    assert p["report_split"] is (len(user_turns) == 2)


async def test_end_of_speech_to_first_agent_audio(say: dict[str, Int16Array], whisper: WhisperTranscriber, tmp_path: Path) -> None:  # fmt: skip
    call = Call(say)
    call.caller("question", "Do you deliver?", 1.0, 2.0, expects="deliver")
    call.agent_answer(2.41, "deliver", last=2)
    call.caller("question", "What are your hours?", 9.0, 10.0, expects="hours")  # over the answer
    first, second = (await call.score(tmp_path, whisper)).latencies
    assert first["e2e_ms"] == pytest.approx(410, abs=15) and not first["over_agent"]
    assert second["over_agent"] and second["e2e_ms"] is None


# -- pieces -------------------------------------------------------------------------------------


def test_spans_bridge_pauses_inside_a_clause_only() -> None:
    active = np.zeros(300, bool)
    active[10:50] = active[60:100] = active[130:150] = True  # 0.1 s gap, then 0.3 s gap
    assert spans(active) == [(0.1, 1.0), (1.3, 1.5)]


def test_label_prefers_the_answer_being_spoken_and_reads_numbers() -> None:
    ref = {k: words(v) for k, v in ANSWERS.items()}
    assert label("Most orders arrive within 45 minutes", ref)[0] == "deliver"
    assert label("open for", ref, prefer="greeting")[0] == "greeting"
    assert label("yes", ref) == (None, 0, 0)  # one word says nothing about which answer
    answer, w0, _ = label("Of course, of course, I am connecting you", ref)
    assert answer == "human" and w0 == 0


def test_bad_files_are_named(tmp_path: Path) -> None:
    (tmp_path / "script.json").write_text("{")
    with pytest.raises(ScriptError, match=r"script\.json: not JSON"):
        load_script(tmp_path / "script.json")
    (tmp_path / "script.json").write_text('{"version": 1}')
    with pytest.raises(ScriptError, match="not a benchmark script"):
        load_script(tmp_path / "script.json")
    write_wav(tmp_path / "mono.wav", [np.zeros(160, np.int16)])
    from bench.conversation.score import read_call

    with pytest.raises(ScoreError, match=r"mono\.wav: expected 2 channels"):
        read_call(tmp_path / "mono.wav")
