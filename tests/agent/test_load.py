"""`voicerun load`: many calls in one process through the Call API, and nothing left behind."""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import structlog

from agent import ProviderPool, run_load
from agent._load import speech_ends
from pipeline import SAMPLE_RATE, VADConfig, write_wav
from pipeline.testing import instant_providers, speech_like
from workflows import load_workflow_text

WORKFLOW = """
version: 1
slug: load
start: desk
defaults:
  stt: whisper
  llm: {provider: openai, model: gpt-4o-mini}
  tts: hibari
  turn: {end_of_turn: silence, end_of_speech_ms: 300}
agents:
  desk:
    instructions: Test.
    greeting: Hello.
    tools: [lookup]
tools:
  lookup:
    description: Look something up.
    http: {url: "http://127.0.0.1:9/lookup", method: GET}
"""


def caller(turns: int = 1) -> np.ndarray:
    gap = np.zeros(int(0.5 * SAMPLE_RATE), np.int16)
    return np.concatenate([part for k in range(turns) for part in (speech_like(0.3, seed=k), gap)])


@pytest.fixture
def warnings_only() -> Iterator[None]:
    """Thousands of calls log thousands of info lines; the soak is about what the process holds."""
    old = structlog.get_config()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    try:
        yield
    finally:
        structlog.configure(**old)


def test_speech_ends_are_where_the_session_would_end_each_turn() -> None:
    ends = speech_ends(caller(3), VADConfig(end_silence_ms=300))
    assert len(ends) == 3
    assert np.allclose(ends, [0.3, 1.1, 1.9], atol=0.04)


@pytest.mark.usefixtures("warnings_only")
async def test_two_thousand_calls_leave_no_task_thread_or_socket_behind() -> None:
    # The CI-sized form of the 2,000-call soak (bench/overhead.py and `voicerun load` do it on
    # the real clock): 50 at a time on the virtual clock, every turn answered, and the process
    # holds what it held after a warm-up run, no more.
    # asyncio's debug mode (on for the suite) records a stack for every future: four times the
    # run time here, and nothing to find that the suite's other tests would not.
    asyncio.get_running_loop().set_debug(False)
    workflow = load_workflow_text(WORKFLOW)
    pool = ProviderPool(instant_providers())
    try:
        await run_load(workflow, caller(), providers=pool, calls=50, total=100, virtual_clock=True)
        report = await run_load(workflow, caller(), providers=pool, calls=50, total=2000, virtual_clock=True)
    finally:
        await pool.aclose()
    assert report.calls == 2000 and report.failed_calls == 0, report.failures
    assert report.turns == 2000 and report.unanswered_turns == 0
    assert report.leaks.tasks[1] == report.leaks.tasks[0]
    assert report.leaks.threads[1] == report.leaks.threads[0]
    assert report.leaks.open_files[1] == report.leaks.open_files[0]
    # Stamped at arrival, the turn metrics read what the caller heard (to a frame).
    assert report.reported_e2e_p95_ms is not None and report.e2e_p95_ms is not None
    assert abs(report.reported_e2e_p95_ms - report.e2e_p95_ms) <= 21


async def test_calls_and_total_are_checked() -> None:
    workflow = load_workflow_text(WORKFLOW)
    pool = ProviderPool(instant_providers())
    try:
        for calls, total in ((0, None), (5, 4)):
            try:
                await run_load(
                    workflow, caller(), providers=pool, calls=calls, total=total, virtual_clock=True
                )
            except ValueError:
                continue
            raise AssertionError(f"calls={calls} total={total} was accepted")
    finally:
        await pool.aclose()


def _voicerun(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", *args], capture_output=True, text=True, timeout=120, check=False
    )


def test_voicerun_load_prints_the_figures_and_writes_the_report(tmp_path: Path) -> None:
    wf = tmp_path / "load.yaml"
    wf.write_text(WORKFLOW)
    wav = tmp_path / "caller.wav"
    write_wav(wav, [caller(2)])
    report = tmp_path / "out" / "load.json"
    done = _voicerun("load", "--workflow", str(wf), "--input", str(wav), "--calls", "2", "--total", "3",
                     "--ramp", "0", "--instant-providers", "--report", str(report))  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "3 calls, 2 at a time" in done.stdout and "p95" in done.stdout
    data = json.loads(report.read_text())
    assert data["calls"] == 3 and data["failed_calls"] == 0 and data["turns"] == 6
    assert data["cpu_s_per_call_s"] > 0 and data["rss_peak_mb"] >= data["rss_start_mb"]


def test_voicerun_load_refuses_bad_counts_before_running(tmp_path: Path) -> None:
    wf = tmp_path / "load.yaml"
    wf.write_text(WORKFLOW)
    wav = tmp_path / "caller.wav"
    write_wav(wav, [caller()])
    for args, message in (
        (["--calls", "0"], "--calls must be between 1"),
        (["--calls", "5", "--total", "2"], "--total (2) must be at least --calls (5)"),
        (["--calls", "1", "--ramp", "-1"], "--ramp must be between 0 and 3600"),
    ):
        done = _voicerun("load", "--workflow", str(wf), "--input", str(wav), *args)
        assert done.returncode == 2 and message in done.stderr, (args, done.stderr)
