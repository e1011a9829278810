"""Each peer's own virtual environment, built from its pins and reused while they stay the same."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

STAMP = ".bench-peers-pins"


class VenvError(RuntimeError):
    pass


def fingerprint(requirements: Path, python: str) -> str:
    """What a built venv must match: the pins and the interpreter that made it."""
    version = subprocess.run(
        [python, "-c", "import sys; print(sys.version)"], capture_output=True, text=True, check=True
    ).stdout
    return hashlib.sha256(requirements.read_bytes() + version.encode()).hexdigest()


def ensure_venv(root: Path, name: str, requirements: Path, python: str = "python3") -> Path:
    """The venv's python, building root/name from the pins unless a build of the same pins is there."""
    venv = root / name
    want = fingerprint(requirements, python)
    stamp = venv / STAMP
    if stamp.exists() and stamp.read_text().strip() == want:
        return venv / "bin/python"
    # A half-built or stale venv is thrown away rather than patched: pip would keep packages the
    # new pins no longer list.
    shutil.rmtree(venv, ignore_errors=True)
    print(f"building {venv} from {requirements.name} ...", file=sys.stderr, flush=True)
    steps = [
        [python, "-m", "venv", str(venv)],
        [str(venv / "bin/python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
         "-r", str(requirements)],
    ]  # fmt: skip
    for step in steps:
        done = subprocess.run(step, capture_output=True, text=True)
        if done.returncode != 0:
            tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-5:])
            raise VenvError(f"{' '.join(step[:4])} ... failed:\n{tail}")
    stamp.write_text(want + "\n")
    return venv / "bin/python"
