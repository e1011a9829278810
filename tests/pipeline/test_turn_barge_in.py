"""After a barge-in, not one frame of the cancelled reply plays, whatever stage its audio was in;
history and metrics say what the caller heard. Scripted providers on the virtual clock."""

from __future__ import annotations

import pytest
from test_session import run_call, runs_of_audio, timeline

from pipeline import AgentSpeech, TurnConfig
from pipeline.testing import ScriptedLLM, ToneTTS


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
