"""After a barge-in, not one frame of the cancelled reply plays, whatever stage its audio was in;
history and metrics say what the caller heard. Scripted providers on the virtual clock."""

from __future__ import annotations

import numpy as np
import pytest
from test_session import run_call, runs_of_audio, timeline

from pipeline import FRAME_S, AgentSpeech, TurnConfig
from pipeline.testing import ScriptedLLM, ToneTTS, fricative


async def test_tts_waiting_for_room_in_the_playout_cannot_play_after_the_cut() -> None:
    # A 1 s playout buffer and 2 s segments: when the caller cuts in, the reply's TTS is blocked
    # in write() with its next segment. The flush makes room; that segment must not slip in.
    long_reply = "This is a long answer. " * 6
    audio = timeline(("speech", 1.0), ("silence", 1.0), ("speech", 1.5), ("silence", 4.0))
    llm = ScriptedLLM(lambda msgs: long_reply if len(msgs) < 3 else "Okay.")
    turn = TurnConfig(max_buffer_s=1.0)
    run, summary = await run_call(
        audio, ["tell me everything", "stop, I want a human"], llm, tts=ToneTTS(2.0), turn=turn
    )
    onset, caller_end = 2.0, 3.5
    first, *rest = runs_of_audio(run.sent)
    assert first[1] - onset <= 0.100
    assert len(rest) == 1, f"agent audio after the cut: {rest}"
    start, end = rest[0]
    assert start >= caller_end + 0.3 and end - start == pytest.approx(2.0, abs=0.03)
    assert summary.turns[1].e2e_latency_ms == pytest.approx((start - caller_end) * 1000, abs=21)
    heard = run.of(AgentSpeech)
    assert [h.interrupted for h in heard] == [True, False] and heard[1].text == "Okay."
    assert long_reply.startswith(heard[0].text) and len(heard[0].text) < len(long_reply) / 3


async def test_a_word_that_starts_unvoiced_stops_the_agent_before_its_vowel() -> None:
    # "Stop": 140 ms of /s/, then the voiced rest. The VAD needs 60 ms of what it calls voiced;
    # the energy onset pauses the agent on the /s/'s first frame.
    long_reply = "This is a long answer. " * 10
    audio = np.concatenate([
        timeline(("speech", 1.0), ("silence", 1.0)), fricative(0.14, -50),
        timeline(("speech", 1.5), ("silence", 3.0)),
    ])  # fmt: skip
    llm = ScriptedLLM(lambda msgs: long_reply if len(msgs) < 3 else "Okay.")
    stops = []
    for confirm_ms in (400, 0):
        run, summary = await run_call(
            audio, ["tell me everything", "stop, I want a human"], llm, tts=ToneTTS(1.0),
            turn=TurnConfig(barge_in_confirm_ms=confirm_ms),
        )  # fmt: skip
        first = runs_of_audio(run.sent)[0]
        assert first[0] < 2.0 < first[1] and summary.turns[0].interrupted
        stops.append(first[1] - 2.0)
    with_onset, voiced_only = stops
    assert with_onset <= 0.040, f"agent talked {with_onset * 1000:.0f} ms over the /s/"
    assert voiced_only >= with_onset + 0.040, "without the onset pause the agent waits for the VAD"


async def test_a_click_pauses_the_agent_and_it_resumes_where_it_paused() -> None:
    # 40 ms of noise over the reply, no speech after it: a short gap, then the rest of the same
    # audio. Nothing is lost or repeated, and no turn or interruption is recorded.
    reply = "First part of the answer. Second part of the answer. Third part."
    audio = np.concatenate([
        timeline(("speech", 1.0), ("silence", 1.0)), fricative(0.04, -30),
        timeline(("silence", 4.0)),
    ])  # fmt: skip
    turn = TurnConfig(barge_in_confirm_ms=400)
    run, summary = await run_call(audio, ["tell me"], ScriptedLLM(reply), tts=ToneTTS(0.8), turn=turn)
    (_, e1), (s2, _) = runs_of_audio(run.sent)
    assert 2.0 < e1 <= 2.0 + 0.040
    assert s2 - e1 == pytest.approx(0.4, abs=0.041)
    assert len(run.sent) * FRAME_S == pytest.approx(3 * 0.8, abs=0.03)
    assert all(any(frame) for frame in run.pcm), "no silent frame was sent for the pause"
    assert len(summary.turns) == 1 and not summary.turns[0].interrupted
    assert run.of(AgentSpeech)[-1].text == reply
