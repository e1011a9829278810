"""Regenerates the bundled caller recordings with the embedded TTS (run by hand, deterministic).

    HF_HUB_OFFLINE=1 .venv/bin/python workflows/examples/audio/make_recordings.py

A script is a list of ("say", text) and ("wait", seconds); the caller voice is Hibari's bundled
voice at a slower speed, so it is told apart from the agent by ear.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline import SAMPLE_RATE, to_internal, write_wav

HERE = Path(__file__).resolve().parent

SCRIPTS: dict[str, list[tuple[str, str | float]]] = {
    # The front desk greets for about 3.5 s; the caller waits, asks two things, says goodbye.
    "front-desk-caller.wav": [
        ("wait", 4.5),
        ("say", "Hi, what time do you open tonight?"),
        ("wait", 5.0),
        ("say", "And where are you located?"),
        ("wait", 6.0),
        ("say", "Great, thanks a lot, bye!"),
        ("wait", 4.0),
    ],
}


def render(script: list[tuple[str, str | float]]) -> np.ndarray:
    from hibari import Hibari

    tts = Hibari()
    parts = []
    for kind, value in script:
        if kind == "wait":
            parts.append(np.zeros(int(float(value) * SAMPLE_RATE), np.int16))
        else:
            parts.append(to_internal(tts(str(value), speed=0.9, seed=7), 24_000))
    return np.concatenate(parts)


def main() -> None:
    for name, script in SCRIPTS.items():
        write_wav(HERE / name, [render(script)])
        print(f"wrote {HERE / name}")


if __name__ == "__main__":
    main()
