"""SIGINT and SIGTERM end a `voicerun run` call gracefully: the partial transcript is printed,
the WAV and report written, the ledger closes the call with the reason, and the exit status says
which signal ended it."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipeline import SAMPLE_RATE, read_wav

ROOT = Path(__file__).resolve().parents[2]
WORKFLOW = ROOT / "workflows" / "examples" / "front-desk.yaml"
RECORDING = ROOT / "workflows" / "examples" / "audio" / "front-desk-caller.wav"


def start_call(tmp_path: Path) -> subprocess.Popen[str]:
    """A real-time call whose JSON logs we read, so the signal is sent once the call runs."""
    env = {**os.environ, "VOICERUN_LOG_LEVEL": "info", "VOICERUN_LOG_FORMAT": "json"}
    return subprocess.Popen(
        [sys.executable, "-m", "agent", "run", "--workflow", str(WORKFLOW), "--input", str(RECORDING),
         "--output", str(tmp_path / "call.wav"), "--report", str(tmp_path / "report.json")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env,
    )  # fmt: skip


def wait_for_log(proc: subprocess.Popen[str], event: str) -> None:
    assert proc.stderr is not None
    for line in proc.stderr:
        if line.startswith("{") and json.loads(line).get("event") == event:
            return
    pytest.fail(f"the call exited before logging {event}")


@pytest.mark.parametrize(
    ("sig", "status", "reason"),
    [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")],
    ids=["SIGINT", "SIGTERM"],
)
def test_a_signal_ends_the_call_and_keeps_what_it_has(
    tmp_path: Path, sig: signal.Signals, status: int, reason: str
) -> None:
    proc = start_call(tmp_path)
    try:
        wait_for_log(proc, "rule_matched")  # the greeting was played and the caller answered
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == status, err
    assert "Traceback" not in err
    assert f"ended: {reason}" in out
    assert "agent : Thanks for calling" in out and "caller: Hi, what time do you open" in out
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["status"] == "completed" and report["ended_reason"] == reason
    assert report["transcript"][0]["content"] == "Call started"
    # The WAV holds the call as far as it went, not the whole recording.
    call = read_wav(tmp_path / "call.wav")
    full_s = len(read_wav(RECORDING)) / SAMPLE_RATE
    assert len(call) / SAMPLE_RATE < full_s
    assert np.abs(call).max() > 0
    (row,) = sqlite3.connect(Path(os.environ["VOICERUN_DATA_DIR"]) / "voicerun.db").execute(
        "SELECT status, ended_reason FROM calls WHERE id = ?", (report["call_id"],)
    )
    assert row == ("completed", reason)


def test_a_signal_while_waiting_for_the_usage_export_stops_only_the_wait(tmp_path: Path) -> None:
    import socket

    # A usage API that takes connections and never answers: the export would wait its 10 s.
    api = socket.socket()
    api.bind(("127.0.0.1", 0))
    api.listen()
    env = {
        **os.environ,
        "VOICERUN_USAGE_API_URL": f"http://127.0.0.1:{api.getsockname()[1]}",
        "VOICERUN_USAGE_API_KEY": "k",
        "VOICERUN_USAGE_AGENT_ID": "agent",
        "VOICERUN_USAGE_CUSTOMER_ID": "customer",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent", "run", "--workflow", str(WORKFLOW), "--input", str(RECORDING),
         "--report", str(tmp_path / "report.json"), "--fast"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("report:"):
                break  # the results are kept; the command now waits for the export
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
        api.close()
    assert proc.returncode == 130, err
    assert "not waiting for the usage export" in err and "Traceback" not in err
    assert "usage export:" not in out
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["ended_reason"] == "agent_ended"
    db = sqlite3.connect(Path(os.environ["VOICERUN_DATA_DIR"]) / "voicerun.db")
    (status,) = db.execute("SELECT status FROM calls WHERE id = ?", (report["call_id"],)).fetchone()
    (usage,) = db.execute(
        "SELECT count(*) FROM usage_events WHERE call_id = ?", (report["call_id"],)
    ).fetchone()
    assert status == "completed" and usage > 0  # the ledger has the call; the export resumes later
