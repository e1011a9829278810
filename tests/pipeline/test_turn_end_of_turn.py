"""End of turn with the model (TurnConfig.end_of_turn = "model") inside the session: asked once per
pause, off the event loop, one model per process; a mid-sentence pause does not end the turn."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import MutableMapping, Sequence
from typing import Any

import numpy as np
import pytest
from conftest import SpeechSample
from test_session import Run, run_call, silence

from pipeline import (
    EndOfTurnConfig,
    TurnCompleted,
    TurnConfig,
    VADConfig,
    shared_end_of_turn_model,
)
from pipeline.testing import ScriptedLLM, ToneTTS

MODEL = TurnConfig(end_of_turn="model")


def pcm(sample: SpeechSample) -> np.ndarray:
    return np.frombuffer(sample.pcm, np.int16)


def decisions(events: Sequence[MutableMapping[str, Any]]) -> list[tuple[str, str]]:
    return [(e["action"], e["reason"]) for e in events if e["event"] == "end_of_turn"]


async def test_a_complete_sentence_ends_the_turn_at_the_models_answer_not_the_max_wait(
    speech_samples: tuple[SpeechSample, ...], captured_logs: list[MutableMapping[str, Any]]
) -> None:
    audio = np.concatenate([silence(0.5), pcm(speech_samples[0]), silence(3.0)])
    run, summary = await run_call(audio, ["please send the invoice"], ScriptedLLM("Sure."), turn=MODEL)
    assert decisions(captured_logs) == [("end", "complete")]
    (turn,) = summary.turns
    # asked at 200 ms of silence; the answer took one predict(), far from the 2 s max wait
    assert 200 <= turn.eou_delay_ms < 1500
    assert len(run.of(TurnCompleted)) == 1


async def test_a_pause_mid_sentence_does_not_end_the_turn(
    speech_samples: tuple[SpeechSample, ...], captured_logs: list[MutableMapping[str, Any]]
) -> None:
    from pipeline.providers import HibariConfig, HibariTTS

    tts = HibariTTS(HibariConfig(seed=7))

    async def say(text: str) -> np.ndarray:
        return np.frombuffer(b"".join([c async for c in tts.synthesize(text)]), np.int16)

    # Spoken as one sentence with a hesitation: the prosody of a caller who will go on.
    audio = np.concatenate([silence(0.5), await say("My order number is... four five six."), silence(3.0)])
    # With silence timing the 0.8 s pause ends a turn: two turns, the first answer cut off.
    split, _ = await run_call(audio, ["my order number is", "four five six"], ScriptedLLM("Thanks."))
    assert len(split.of(TurnCompleted)) == 2
    captured_logs.clear()
    _, summary = await run_call(
        audio, ["my order number is four five six"], ScriptedLLM("Thanks."), turn=MODEL
    )
    assert len(summary.turns) == 1 and not summary.turns[0].interrupted
    asked = decisions(captured_logs)
    # Nothing ended the turn before the sentence did. (On a loaded machine the decision asked in
    # the pause may still be pending when the caller goes on, and is then dropped unlogged.)
    assert all(action != "end" for action, _ in asked[:-1]) and asked[-1] == ("end", "complete"), asked


async def test_the_model_runs_off_the_loop_once_per_process_for_every_call(
    speech_samples: tuple[SpeechSample, ...], caplog: pytest.LogCaptureFixture
) -> None:
    loop = asyncio.get_running_loop()
    loop.set_debug(True)
    # Features and inference take ~70-120 ms: on the loop they would show here.
    loop.slow_callback_duration = 0.05
    audio = np.concatenate(
        [silence(0.5), pcm(speech_samples[1]), silence(2.0), pcm(speech_samples[3]), silence(2.0)]
    )
    sessions: list[Any] = []
    with caplog.at_level(logging.WARNING, logger="asyncio"):
        # One after the other: each call installs its own virtual clock on the loop.
        runs: list[tuple[Run, Any]] = [
            await run_call(
                audio, ["one", "two"], ScriptedLLM("Sure."), tts=ToneTTS(0.3), turn=MODEL, sessions=sessions
            )
            for _ in range(2)
        ]
    slow = [r.getMessage() for r in caplog.records if r.name == "asyncio" and "Executing" in r.getMessage()]
    assert slow == []
    assert all(len(summary.turns) == 2 for _, summary in runs)
    model = await shared_end_of_turn_model()
    assert [s.end_of_turn_model for s in sessions] == [model, model]


def test_turn_settings_with_the_model_wait_past_the_silence_endpoint() -> None:
    turn = TurnConfig(
        vad=VADConfig(end_silence_ms=300),
        end_of_turn="model",
        end_of_turn_config=EndOfTurnConfig(max_wait_ms=2500),
    )
    assert turn.endpointer_vad().end_silence_ms == 2500
    assert TurnConfig().endpointer_vad().end_silence_ms == 300


@pytest.mark.parametrize(
    ("turn", "problem"),
    [
        ("{end_of_turn: model, end_of_speech_ms: 2500, end_of_turn_max_wait_ms: 2000}",
         "defaults.turn: with end_of_turn: model, end_of_turn_ask_after_ms <= end_of_speech_ms <= end_of_turn_max_wait_ms must hold, got 200, 2500, 2000"),
        ("{end_of_turn: smart}", "defaults.turn.end_of_turn: Input should be 'silence' or 'model'"),
        ("{end_of_turn: model, end_of_turn_threshold: 0}", "defaults.turn.end_of_turn_threshold: Input should be greater than 0"),
    ],
)  # fmt: skip
def test_workflow_turn_settings_are_checked_with_one_line_each(turn: str, problem: str) -> None:
    from workflows import WorkflowError, load_workflow_text

    text = f"version: 1\nslug: x\nstart: a\ndefaults:\n  turn: {turn}\nagents:\n  a: {{instructions: hi}}\n"
    with pytest.raises(WorkflowError) as info:
        load_workflow_text(text)
    assert problem in str(info.value) and len(str(info.value).splitlines()) == 1


async def test_whisper_gives_the_pauses_transcript_and_finalize_reuses_its_decode(
    speech_samples: tuple[SpeechSample, ...],
) -> None:
    from pipeline import FRAME_BYTES
    from pipeline.providers import WhisperConfig, WhisperSTT

    session = await WhisperSTT(WhisperConfig(interim_interval_s=0)).connect()
    utterance = session.begin()
    assert await utterance.partial() is None  # no pause yet: nothing to wait for
    pcm = speech_samples[1].pcm
    for i in range(0, len(pcm) - FRAME_BYTES + 1, FRAME_BYTES):
        utterance.push(pcm[i : i + FRAME_BYTES], True)
    for _ in range(10):  # 200 ms of pause: the speculative decode starts
        utterance.push(bytes(FRAME_BYTES), False)
    partial = await utterance.partial()
    assert partial is not None and "table" in partial.lower()
    transcript = await utterance.finalize()
    assert transcript.text == partial and utterance.stats.decodes == 1
