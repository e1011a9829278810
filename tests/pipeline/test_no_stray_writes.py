"""The embedded engines write nothing outside the paths a user gives: not in HOME, not in the cwd.

Each run is a fresh process, because what onnxruntime writes it writes when it is first imported.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ENGINES = """
import asyncio

import numpy as np

from pipeline import FRAME_BYTES, frames, shared_end_of_turn_model
from pipeline.providers import HibariTTS, WhisperConfig, WhisperSTT


async def main() -> None:
    pcm = b"".join([chunk async for chunk in HibariTTS().synthesize("Thank you very much.")])
    session = await WhisperSTT(WhisperConfig(interim_interval_s=0)).connect()
    utterance = session.begin()
    for frame in frames(np.frombuffer(pcm, "<i2")):
        utterance.push(frame, True)
    for _ in range(15):
        utterance.push(bytes(FRAME_BYTES), False)
    print("transcript:", (await utterance.finalize()).text)
    await session.aclose()
    model = await shared_end_of_turn_model()
    print("end of turn:", (await model.predict(pcm)).outcome)
    await model.aclose()


asyncio.run(main())
"""


def test_the_embedded_engines_leave_home_and_the_cwd_untouched(tmp_path: Path) -> None:
    home, cwd, tmp = tmp_path / "home", tmp_path / "cwd", tmp_path / "tmp"
    for d in (home, cwd, tmp):
        d.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("XDG_CACHE_HOME", "ORT_DISABLE_TELEMETRY")}
    env |= {"HOME": str(home), "TMPDIR": str(tmp), "PYTHONDONTWRITEBYTECODE": "1"}
    root = Path(__file__).resolve().parents[2]
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, "-c", ENGINES], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    assert "transcript: thank you very much" in proc.stdout.lower()  # the engines really ran
    assert "end of turn: " in proc.stdout  # scored, or late on a loaded machine: loaded either way
    written = sorted(str(p.relative_to(tmp_path)) for d in (home, cwd, tmp) for p in d.rglob("*"))
    assert written == []
