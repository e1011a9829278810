"""The end-of-turn model (Smart Turn v3.2) on this machine: load cost, per-call latency, accuracy.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/end_of_turn.py [--speeds 0.9,1.0,1.1]

Load: time and resident memory added by EndOfTurnModel.load() in a fresh process (it imports
faster-whisper for the features; a worker that runs Whisper has paid that already).
Latency: every predict() of the accuracy run, split into features and inference, plus the whole
await as the event loop sees it.
Accuracy: sentences spoken by Hibari (one rendition per speed; its seed changes nothing audible),
whole ("complete"), and spoken with a hesitation in the middle ("My order number is... four five
six.") cut at that pause ("cut": a caller who will go on), each as the session would ask: 0.5 s of lead-in, the speech, then 200 ms of pause
(and 400 ms, to show that the model's "incomplete" fades).
Conditions: clean; white noise at -50 dBFS; 8 kHz telephone band (down to 8 kHz and back).
"model" is right when p >= 0.5 exactly for complete sentences; "decision" is what
decide_end_of_turn() does at 200 ms with Whisper tiny.en's transcript of the same audio, right when
it ends complete sentences and waits on cut ones. Run by hand: ~2 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soxr

from pipeline import (
    FRAME_BYTES,
    FRAME_S,
    FRAME_SAMPLES,
    SAMPLE_RATE,
    EndOfTurnConfig,
    EndOfTurnModel,
    EndOfTurnPrediction,
    decide_end_of_turn,
    frames,
    rms_dbfs,
    to_internal,
)
from pipeline.providers import HibariConfig, HibariTTS, WhisperConfig, WhisperSTT

# (what is said before a mid-sentence pause, what follows it)
SENTENCES = (
    ("My order number is", "four five six."),
    ("I would like to book a table for", "two people at seven."),
    ("I need to change my address and", "my phone number."),
    ("Can you send it to", "my office?"),
    ("The delivery should arrive on", "Monday morning."),
    ("I want to cancel my", "subscription."),
    ("Could you please check the", "status of my order?"),
    ("So what I was thinking is", "we could meet on Friday."),
)
LEAD_IN_S = 0.5
PAUSES_MS = (200, 400)
NOISE_DBFS = -50.0


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def before_longest_pause(x: np.ndarray) -> np.ndarray:
    """The speech up to the longest pause inside it (the hesitation's)."""
    quiet = [rms_dbfs(f) < -45.0 for f in frames(x)]
    first, last = quiet.index(False), len(quiet) - quiet[::-1].index(False)
    best_start, best_len, run = 0, 0, 0
    for k in range(first, last):
        run = run + 1 if quiet[k] else 0
        if run > best_len:
            best_start, best_len = k + 1 - run, run
    if best_len * FRAME_S < 0.1:
        raise RuntimeError("no pause inside the speech")
    return x[: best_start * FRAME_SAMPLES]


def silence(seconds: float) -> np.ndarray:
    return np.zeros(round(seconds * SAMPLE_RATE), np.int16)


def clean(x: np.ndarray, _rng: np.random.Generator) -> np.ndarray:
    return x


def noisy(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    noise = rng.standard_normal(x.size) * 32768 * 10 ** (NOISE_DBFS / 20)
    return np.clip(x + noise, -32768, 32767).astype(np.int16)


def telephone(x: np.ndarray, _rng: np.random.Generator) -> np.ndarray:
    narrow = soxr.resample(x.astype(np.float32) / 32768, SAMPLE_RATE, 8000, quality="HQ")
    return to_internal(narrow, 8000)


CONDITIONS: dict[str, Callable[[np.ndarray, np.random.Generator], np.ndarray]] = {
    "clean": clean,
    "noise -50 dBFS": noisy,
    "8 kHz band": telephone,
}


@dataclass(frozen=True, slots=True)
class Trial:
    condition: str
    complete: bool
    text: str
    pause_ms: int
    prediction: EndOfTurnPrediction
    await_ms: float
    transcript: str = ""
    decision: str = ""


async def transcribe(stt: WhisperSTT, speech: np.ndarray) -> str:
    session = await stt.connect()
    utterance = session.begin()
    for frame in frames(speech):
        utterance.push(frame, True)
    for _ in range(10):
        utterance.push(bytes(FRAME_BYTES), False)
    text = (await utterance.finalize()).text
    await session.aclose()
    return text


def pct(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--speeds", default="0.9,1.0,1.1", help="Hibari speaking rates, one rendition each")
    args = parser.parse_args()

    rss_before = rss_mb()
    started = time.perf_counter()
    model = await asyncio.to_thread(EndOfTurnModel.load)
    load_ms = (time.perf_counter() - started) * 1000
    rss_added = rss_mb() - rss_before
    started = time.perf_counter()
    reload = await asyncio.to_thread(EndOfTurnModel.load)  # faster-whisper already imported
    reload_ms = (time.perf_counter() - started) * 1000
    await reload.aclose()

    stt = WhisperSTT(WhisperConfig(interim_interval_s=0))
    await stt.warm()
    config = EndOfTurnConfig()
    rng = np.random.default_rng(0)
    trials: list[Trial] = []
    speeds = [float(v) for v in args.speeds.split(",")]
    for speed in speeds:
        tts = HibariTTS(HibariConfig(seed=0, speed=speed))
        for head, tail in SENTENCES:
            for complete in (True, False):
                text = f"{head} {tail}" if complete else head
                said = f"{head} {tail}" if complete else f"{head}... {tail}"
                spoken = np.frombuffer(b"".join([c async for c in tts.synthesize(said)]), np.int16)
                if not complete:
                    spoken = before_longest_pause(spoken)
                for name, condition in CONDITIONS.items():
                    for pause_ms in PAUSES_MS:
                        audio = condition(
                            np.concatenate([silence(LEAD_IN_S), spoken, silence(pause_ms / 1000)]), rng
                        )
                        t0 = time.perf_counter()
                        prediction = await model.predict(audio.astype("<i2").tobytes())
                        await_ms = (time.perf_counter() - t0) * 1000
                        transcript = decision = ""
                        if pause_ms == PAUSES_MS[0]:
                            speech_end = audio.size - round(pause_ms / 1000 * SAMPLE_RATE)
                            transcript = await transcribe(
                                stt, audio[round(LEAD_IN_S * SAMPLE_RATE) : speech_end]
                            )
                            decision = decide_end_of_turn(
                                config, prediction.p_complete, transcript, pause_ms
                            ).action
                        trials.append(
                            Trial(name, complete, text, pause_ms, prediction, await_ms, transcript, decision)
                        )

    scored = [t.prediction for t in trials if t.prediction.outcome == "scored"]
    print(f"machine: {os.cpu_count()} cores; {len(trials)} calls, {len(scored)} scored, "
          f"{len(trials) - len(scored)} unanswered")  # fmt: skip
    print(f"load: {load_ms:.0f} ms cold (incl. importing faster-whisper), {reload_ms:.0f} ms warm; "
          f"RSS +{rss_added:.0f} MB")  # fmt: skip
    print("\n| per call (ms) | p50 | p95 | max |\n|---|---|---|---|")
    for label, values in (
        ("features", [p.features_ms for p in scored]),
        ("inference", [p.inference_ms for p in scored]),
        ("predict() awaited", [t.await_ms for t in trials]),
    ):
        print(f"| {label} | {pct(values, 50):.0f} | {pct(values, 95):.0f} | {max(values):.0f} |")

    def model_right(t: Trial) -> bool:
        p = t.prediction.p_complete
        return p is not None and (p >= config.threshold) == t.complete

    def decision_right(t: Trial) -> bool:
        return (t.decision == "end") == t.complete

    def share(condition: str, complete: bool, pause_ms: int, right: Callable[[Trial], bool]) -> str:
        rows = [t for t in trials if (t.condition, t.complete, t.pause_ms) == (condition, complete, pause_ms)]
        return f"{sum(right(t) for t in rows)}/{len(rows)}"

    print(f"\nright answers, {len(speeds)} Hibari renditions x {len(SENTENCES)} sentences, complete and cut")
    print("| condition | complete: model | cut: model at 200 ms | cut: model at 400 ms "
          "| complete: decision | cut: decision |\n|---|---|---|---|---|---|")  # fmt: skip
    for name in CONDITIONS:
        cells = [
            share(name, True, 200, model_right),
            share(name, False, 200, model_right),
            share(name, False, 400, model_right),
            share(name, True, 200, decision_right),
            share(name, False, 200, decision_right),
        ]
        print(f"| {name} | {' | '.join(cells)} |")

    print("\ncut sentences, clean, 200 ms: median P(complete), decisions, Whisper's transcripts")
    by_text: dict[str, list[Trial]] = defaultdict(list)
    for t in trials:
        if not t.complete and t.condition == "clean" and t.pause_ms == 200:
            by_text[t.text].append(t)
    for text, rows in by_text.items():
        median = statistics.median(t.prediction.p_complete or 0.0 for t in rows)
        print(f"  {text:<34} {median:4.2f}  {'/'.join(t.decision for t in rows):<15} "
              f"{sorted({t.transcript for t in rows})}")  # fmt: skip
    wrong = [t for t in trials if t.decision and t.complete and t.decision != "end"]
    for t in wrong:
        print(f"  complete sentence held open ({t.condition}): {t.transcript!r} p={t.prediction.p_complete}")
    await model.aclose()


if __name__ == "__main__":
    asyncio.run(main())
