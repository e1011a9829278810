"""`voicerun metering ...` and the ledger's configuration, as a user meets them: real processes,
their exit status and the one line they print."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def voicerun(*args: str, env: dict[str, str], cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    # (without asyncio debug mode, whose slow-callback lines on a loaded machine are not the
    # command's output)
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("VOICERUN_") and k not in ("DATABASE_URL", "PYTHONASYNCIODEBUG")
    }
    return subprocess.run(
        [sys.executable, "-m", "agent", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        env=clean | {"PYTHONPATH": str(ROOT)} | env,
    )


@contextmanager
def read_only(path: Path) -> Iterator[None]:
    """Make `path` (a file or a directory) read-only, for root too (root ignores file modes,
    not the immutable attribute); skips the test where neither works."""
    mode = path.stat().st_mode
    path.chmod(0o555 if path.is_dir() else 0o444)
    immutable = (
        os.geteuid() == 0 and subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode == 0
    )
    try:
        probe = path / "probe" if path.is_dir() else path
        try:
            if path.is_dir():
                probe.mkdir()
            else:
                probe.open("ab").close()
        except OSError:
            pass
        else:
            pytest.skip(f"cannot make {path} read-only here")
        yield
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(path)], check=True)
        path.chmod(mode)


def one_line(proc: subprocess.CompletedProcess[str], code: int) -> str:
    assert proc.returncode == code, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0]


# -- configuration that cannot work: one line, exit 2 ----------------------------------------


def test_a_malformed_database_url_is_one_line_without_the_password(tmp_path: Path) -> None:
    proc = voicerun(
        "metering",
        "migrate",
        env={"DATABASE_URL": "postgresql://voicerun:s3cret@db:port/x", "VOICERUN_DATA_DIR": str(tmp_path)},
    )
    line = one_line(proc, 2)
    assert line.startswith("voicerun: error: DATABASE_URL is not a database URL")
    assert "s3cret" not in proc.stderr and "port/x" not in proc.stderr


def test_a_database_url_port_out_of_range_is_one_line(tmp_path: Path) -> None:
    proc = voicerun(
        "metering",
        "retry",
        env={"VOICERUN_DATABASE_URL": "postgresql://u@db:99999/x", "VOICERUN_DATA_DIR": str(tmp_path)},
    )
    assert one_line(proc, 2) == "voicerun: error: DATABASE_URL: port 99999 is out of range (1-65535)"


def test_a_data_dir_that_cannot_be_created_names_the_path(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("")
    data = tmp_path / "a-file" / "data"
    proc = voicerun("metering", "migrate", env={"VOICERUN_DATA_DIR": str(data)})
    assert (
        one_line(proc, 2) == f"voicerun: error: cannot create the ledger's directory {data}: Not a directory"
    )


def test_a_data_dir_under_a_read_only_directory_names_the_path(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    data = locked / "data"
    with read_only(locked):
        proc = voicerun("metering", "migrate", env={"VOICERUN_DATA_DIR": str(data)})
    line = one_line(proc, 2)
    assert line.startswith(f"voicerun: error: cannot create the ledger's directory {data}: ")
    assert not data.exists()


@pytest.mark.parametrize("url", ["not-a-url", "ftp://usage.example.com", "https://", "http://host:port"])
def test_a_usage_api_url_must_be_http_with_a_host(url: str, tmp_path: Path) -> None:
    proc = voicerun(
        "metering",
        "status",
        env={
            "VOICERUN_DATA_DIR": str(tmp_path),
            "VOICERUN_USAGE_API_URL": url,
            "VOICERUN_USAGE_API_KEY": "k",
            "VOICERUN_USAGE_AGENT_ID": "a",
            "VOICERUN_USAGE_CUSTOMER_ID": "c",
        },
    )
    assert one_line(proc, 2) == (
        "voicerun: error: VOICERUN_USAGE_API_URL: must be an http:// or https:// URL with a host, "
        "e.g. https://cp-api.withpaygent.com"
    )


# -- a ledger that cannot be written is refused before any call ------------------------------


def test_a_read_only_ledger_file_is_refused_by_commands_that_write(tmp_path: Path) -> None:
    env = {"VOICERUN_DATA_DIR": str(tmp_path)}
    assert voicerun("metering", "migrate", env=env).returncode == 0
    ledger = tmp_path / "voicerun.db"
    with read_only(ledger):  # the directory stays writable: SQLite opens the file read-only
        proc = voicerun("metering", "retry", env=env)
    assert one_line(proc, 2) == (
        f"voicerun: error: the ledger file {ledger} cannot be written: attempt to write a readonly database"
    )


# -- commands that only read never create a ledger --------------------------------------------


@pytest.mark.parametrize("command", [["status"], ["status", "--json"], ["dead"], ["doubt"], ["calls"]])
def test_reading_where_no_call_was_recorded_is_one_line_and_creates_nothing(
    command: list[str], tmp_path: Path
) -> None:
    proc = voicerun("metering", *command, env={}, cwd=tmp_path)  # the default data dir: ./data
    assert one_line(proc, 1) == (
        f"voicerun: error: no ledger at {tmp_path.resolve()}/data/voicerun.db: no call has been recorded "
        "here yet (set VOICERUN_DATA_DIR or DATABASE_URL)"
    )
    assert proc.stdout == "" and list(tmp_path.iterdir()) == []


# -- metering calls ------------------------------------------------------------------------------


async def test_calls_lists_recent_calls_with_status_duration_and_cost(tmp_path: Path) -> None:
    import json
    from datetime import UTC, datetime, timedelta
    from decimal import Decimal

    from metering import CallClosed, CallOpened, Ledger, UsageLine, UsageReported, database_url, load_catalog

    t0 = datetime(2026, 5, 4, 10, 0, tzinfo=UTC)
    ledger = await Ledger.open(database_url(None, tmp_path), catalog=load_catalog())
    try:
        await ledger.write(
            [
                CallOpened(call_id="first", workflow_slug="front-desk", started_at=t0),
                UsageReported(
                    call_id="first",
                    seq=0,
                    agent=None,
                    at=t0,
                    line=UsageLine("stt", "deepgram", "nova-3", audio_seconds=Decimal("30")),
                ),
                CallClosed(
                    call_id="first",
                    status="completed",
                    reason="agent_ended",
                    ended_at=t0 + timedelta(seconds=61.5),
                    duration_s=61.5,
                ),
                CallOpened(call_id="second", workflow_slug="billing", started_at=t0 + timedelta(minutes=5)),
            ]
        )
        first = await ledger.call("first")
        assert first is not None and first.cost_total is not None
    finally:
        await ledger.aclose()
    env = {"VOICERUN_DATA_DIR": str(tmp_path)}

    listed = json.loads(voicerun("metering", "calls", "--json", env=env).stdout)
    assert [(c["id"], c["status"], c["duration_s"]) for c in listed] == [
        ("second", "active", None),
        ("first", "completed", 61.5),
    ]
    assert listed[1] | {"cost": None} == {
        "id": "first",
        "workflow": "front-desk",
        "started_at": "2026-05-04T10:00:00Z",
        "status": "completed",
        "reason": "agent_ended",
        "duration_s": 61.5,
        "cost": None,
        "currency": "USD",
    }
    assert Decimal(listed[1]["cost"]) == first.cost_total

    proc = voicerun("metering", "calls", "--status", "completed", "--limit", "5", env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        "CALL\tWORKFLOW\tSTARTED\tSTATUS\tREASON\tDURATION\tCOST",
        f"first\tfront-desk\t2026-05-04T10:00:00Z\tcompleted\tagent_ended\t61.5 s\t{first.cost_total} USD",
    ]
    assert (
        voicerun("metering", "calls", "--limit", "1", env=env).stdout.splitlines()[1].startswith("second\t")
    )
    assert (
        voicerun("metering", "calls", "--status", "failed", env=env).stdout == "no calls with status failed\n"
    )
    assert "must be at least 1" in voicerun("metering", "calls", "--limit", "0", env=env).stderr
