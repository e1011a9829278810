"""`voicerun run` on bad input: one line naming the file and the problem, exit status 2."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
WORKFLOW = ROOT / "workflows" / "examples" / "front-desk.yaml"


def voicerun(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )


def one_line_error(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0]


@pytest.fixture
def good_wav(tmp_path: Path) -> Path:
    import numpy as np

    from pipeline import write_wav

    p = tmp_path / "caller.wav"
    write_wav(p, [np.zeros(1600, np.int16)])
    return p


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda d: d / "missing.wav", "missing.wav: no such file"),
        (
            lambda d: (d / "notes.wav").write_text("hello") and d / "notes.wav",
            "notes.wav: not a readable audio file (Format not recognised)",
        ),
        (
            lambda d: (d / "empty.wav").write_bytes(b"") or d / "empty.wav",
            "empty.wav: empty file (0 bytes)",
        ),
    ],
    ids=["missing", "not-a-wav", "empty"],
)
def test_bad_recording(tmp_path: Path, make, expected: str) -> None:  # type: ignore[no-untyped-def]
    line = one_line_error(voicerun("run", "--workflow", WORKFLOW, "--input", make(tmp_path), "--fast"))
    assert expected in line


def test_truncated_wav_header(tmp_path: Path, good_wav: Path) -> None:
    bad = tmp_path / "cut.wav"
    bad.write_bytes(good_wav.read_bytes()[:30])
    assert "cut.wav: not a readable audio file" in one_line_error(
        voicerun("run", "--workflow", WORKFLOW, "--input", bad, "--fast")
    )


def test_workflow_that_does_not_parse(tmp_path: Path, good_wav: Path) -> None:
    wf = tmp_path / "broken.yaml"
    wf.write_text("version: 1\nslug: x\nstart: a\nagents:\n  a:\n    instructions: [unclosed\n")
    line = one_line_error(voicerun("run", "--workflow", wf, "--input", good_wav, "--fast"))
    assert line.startswith(f"voicerun: error: {wf}:7:1: YAML:")


def test_workflow_with_a_wrong_key(tmp_path: Path, good_wav: Path) -> None:
    wf = tmp_path / "typo.yaml"
    wf.write_text("version: 1\nslug: x\nstart: a\nagents:\n  a:\n    instructions: hi\n    greting: hello\n")
    line = one_line_error(voicerun("run", "--workflow", wf, "--input", good_wav, "--fast"))
    assert line == f"voicerun: error: {wf}:7:5: agents.a.greting: unknown key (did you mean 'greeting'?)"


def test_user_data_must_be_a_json_object(good_wav: Path) -> None:
    line = one_line_error(voicerun("run", "--workflow", WORKFLOW, "--input", good_wav, "--user-data", "[1]"))
    assert line == "voicerun: error: --user-data must be a JSON object"


def test_help_is_fast_to_reach_and_lists_run() -> None:
    proc = voicerun("--help")
    assert proc.returncode == 0 and "run" in proc.stdout


def test_an_unknown_workflow_slug_lists_the_known_ones(good_wav: Path) -> None:
    line = one_line_error(voicerun("run", "--workflow", "no-such-flow", "--input", good_wav, "--fast"))
    assert line.startswith("voicerun: error: no-such-flow: no such file, and no workflow 'no-such-flow'")
    assert "front-desk" in line and "daily-call" in line


def test_a_broken_operator_price_file_stops_the_run_with_one_line(tmp_path: Path, good_wav: Path) -> None:
    prices = tmp_path / "prices.yaml"
    prices.write_text("version: x\nstt: [not, a, mapping]\n")
    proc = subprocess.run(
        [sys.executable, "-m", "agent", "run", "--workflow", str(WORKFLOW), "--input", str(good_wav),
         "--report", str(tmp_path / "r.json"), "--fast"],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
        env={**os.environ, "VOICERUN_PRICES": str(prices)},
    )  # fmt: skip
    line = one_line_error(proc)
    assert "prices.yaml" in line
    assert not (tmp_path / "r.json").exists()


@pytest.mark.parametrize(
    ("option", "make", "expected"),
    [
        ("--output", lambda d: d, "is a directory"),
        ("--report", lambda d: d, "is a directory"),
        ("--report", lambda d: (d / "f").write_text("") or d / "f" / "r.json", "is a file, not a directory"),
        ("--report", lambda d: os.mkfifo(d / "fifo") or d / "fifo", "not a regular file"),
        # procfs refuses new files even to root, who may write into any mode-0500 directory
        ("--output", lambda d: Path("/proc/1/c.wav"), "directory /proc/1 is not writable"),
    ],
    ids=["output-dir", "report-dir", "parent-is-a-file", "fifo", "read-only-dir"],
)
def test_a_bad_output_path_is_refused_before_the_call(
    tmp_path: Path,
    good_wav: Path,
    option: str,
    make,
    expected: str,  # type: ignore[no-untyped-def]
) -> None:
    target = make(tmp_path)
    proc = voicerun("run", "--workflow", WORKFLOW, "--input", good_wav, option, target, "--fast")
    line = one_line_error(proc)
    assert line.startswith(f"voicerun: error: {option} {target}: ") and expected in line
    assert proc.stdout == ""  # no call was run


def test_output_and_report_cannot_be_one_file(tmp_path: Path, good_wav: Path) -> None:
    same = tmp_path / "x"
    line = one_line_error(
        voicerun("run", "--workflow", WORKFLOW, "--input", good_wav, "--output", same, "--report", same)
    )
    assert line == f"voicerun: error: --output and --report are the same file: {same}"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("[" * 5000 + "]" * 5000, "--user-data is nested deeper than 32 levels"),
        ('{"a": ' * 40 + "1" + "}" * 40, "--user-data is nested deeper than 32 levels"),
        ('{"note": "' + "[" * 5000 + '"}', None),  # brackets inside a string are only text
    ],
    ids=["deep-array", "deep-object", "brackets-in-a-string"],
)
def test_deeply_nested_user_data_is_one_line(good_wav: Path, raw: str, expected: str | None) -> None:
    proc = voicerun("run", "--workflow", WORKFLOW, "--input", good_wav, "--user-data", raw, "--fast")
    if expected is None:
        assert proc.returncode == 0, proc.stderr
    else:
        assert one_line_error(proc) == f"voicerun: error: {expected}"


def test_version() -> None:
    proc = voicerun("--version")
    assert proc.returncode == 0 and proc.stdout.startswith("voicerun ")


def test_result_commands_print_no_info_logs(tmp_path: Path) -> None:
    proc = voicerun("validate", WORKFLOW)
    assert proc.returncode == 0
    assert proc.stderr.strip() == "1 file checked: 0 errors, 0 warnings"
    env = {**os.environ, "VOICERUN_LOG_LEVEL": "info", "VOICERUN_LOG_FORMAT": "json"}
    loud = subprocess.run(
        [sys.executable, "-m", "agent", "run", "--workflow", str(WORKFLOW), "--input",
         str(ROOT / "workflows" / "examples" / "audio" / "front-desk-caller.wav"), "--fast"],
        capture_output=True, text=True, timeout=120, cwd=ROOT, env=env,
    )  # fmt: skip
    assert '"event": "call_started"' in loud.stderr  # an explicit level still applies


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"DATABASE_URL": "postgresql://u@db:port/x"}, "DATABASE_URL is not a database URL"),
        ({"VOICERUN_DATA_DIR": "/proc/1/data"}, "/proc/1/data"),
        ({"VOICERUN_USAGE_API_URL": "not-a-url"}, "VOICERUN_USAGE_API_URL"),
    ],
    ids=["malformed-database-url", "data-dir-that-cannot-exist", "usage-api-url"],
)
def test_a_ledger_configuration_that_cannot_work_stops_the_run_before_the_call(
    tmp_path: Path, good_wav: Path, env: dict[str, str], expected: str
) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "agent", "run", "--workflow", str(WORKFLOW), "--input", str(good_wav),
         "--report", str(tmp_path / "r.json"), "--fast"],
        capture_output=True, text=True, timeout=120, cwd=ROOT, env={**os.environ, **env},
    )  # fmt: skip
    line = one_line_error(proc)
    assert expected in line and "postgresql://u@db" not in line  # a URL may hold a password
    assert not (tmp_path / "r.json").exists()
