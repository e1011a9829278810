"""Runs every benchmark call through `voicerun run --fast`, one process per call, exactly as a user
would: CALL.wav (caller left, agent right) and REPORT.json land in runs/<label>/<call>/."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from ruamel.yaml import YAML

from .corpus import WORKFLOW

ROOT = Path(__file__).resolve().parents[2]
CALL_TIMEOUT_S = 1800


def parse_overrides(pairs: Sequence[str]) -> dict[str, object]:
    """KEY=VALUE turn settings (VALUE read as YAML: 300, model, true)."""
    yaml = YAML(typ="safe")
    out: dict[str, object] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise SystemExit(
                f"bench-conversation: --turn {pair!r}: expected KEY=VALUE, e.g. end_of_speech_ms=300"
            )
        out[key.strip()] = yaml.load(value)
    return out


def workflow_for(run_dir: Path, turn: dict[str, object]) -> Path:
    """The benchmark workflow, with `defaults.turn` overridden when asked (written into the run)."""
    if not turn:
        return WORKFLOW
    yaml = YAML()
    doc = yaml.load(WORKFLOW.read_text())
    doc["defaults"]["turn"].update(turn)
    path = run_dir / "workflow.yaml"
    run_dir.mkdir(parents=True, exist_ok=True)
    with path.open("w") as fh:
        yaml.dump(doc, fh)
    return path


def run_calls(
    calls: Sequence[Path], run_dir: Path, turn: dict[str, object], source: Path | None = None
) -> list[Path]:
    """Run each call (corpus dir with caller.wav) and return the run dirs that produced results.
    A call that fails is reported with its stderr's last line and left out; the rest go on.

    source: run voicerun from this source tree instead of the installed one (a `git archive` of
    a commit), so a baseline can be measured while the working tree moves on.
    """
    run_dir = run_dir.resolve()
    workflow = workflow_for(run_dir, turn).resolve()
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "VOICERUN_LOG_LEVEL": "warning",
        # The benchmark's calls go to a ledger of their own, not the user's.
        "VOICERUN_DATA_DIR": str(run_dir / "ledger"),
    }
    if source is not None:
        if not (source / "agent" / "__main__.py").is_file():
            raise SystemExit(f"bench-conversation: --source {source}: not a voicerun source tree")
        env["PYTHONPATH"] = str(source.resolve())
    cwd = source.resolve() if source is not None else ROOT
    done = []
    for k, call in enumerate(calls, 1):
        out = run_dir / call.name
        out.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-m", "agent", "run", "--fast", "--workflow", str(workflow),
             "--input", str((call / "caller.wav").resolve()),
             "--output", str(out / "CALL.wav"), "--report", str(out / "REPORT.json")],
            capture_output=True, text=True, env=env, cwd=cwd, timeout=CALL_TIMEOUT_S,
        )  # fmt: skip
        (out / "stdout.txt").write_text(proc.stdout)
        (out / "stderr.txt").write_text(proc.stderr)
        took = time.perf_counter() - started
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
            print(f"run [{k}/{len(calls)}] {call.name}: FAILED (exit {proc.returncode}): {last}", flush=True)
            continue
        print(f"run [{k}/{len(calls)}] {call.name}: {took:.0f} s", flush=True)
        done.append(out)
    return done
