"""End-of-speech latency of the embedded offline engines, on real engines and real time.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/embedded_latency.py [--repeats 4] [--interim-interval-s 0.6]

Each utterance is synthesized speech fed frame by frame at 20 ms pacing, with voiced flags and the
endpoint from pipeline._vad.Endpointer (300 ms of silence after the last voiced frame), exactly as
the session feeds a Whisper utterance. At the endpoint it times finalize() ("finalize latency"),
then the first chunk of HibariTTS for a short reply ("tts first audio"); their sum is what the
caller waits for, minus the LLM. Run by hand: it takes about a minute and prints p50/p95.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections import Counter
from dataclasses import dataclass

import numpy as np

from pipeline import FRAME_BYTES, FRAME_S, Endpointer, VADConfig, frames
from pipeline.providers import HibariConfig, HibariTTS, WhisperConfig, WhisperSTT, WhisperUtterance

SENTENCES = (
    "Yes, that works for me.",
    "Can you check my order status?",
    "I need to change my delivery address.",
    "What time do you open on Saturday?",
    "Please cancel the appointment for tomorrow morning.",
)
REPLY = "Sure, I can help with that."
LEAD_IN_S = 0.5
TAIL_S = 0.6


@dataclass(frozen=True, slots=True)
class Sample:
    text: str
    speech_s: float
    finalize_s: float
    tts_first_audio_s: float
    served_by: str
    decodes: int
    transcript: str


async def run_utterance(stt: WhisperSTT, tts: HibariTTS, text: str, speech: bytes) -> Sample:
    loop = asyncio.get_running_loop()
    session = await stt.connect()
    endpointer = Endpointer(VADConfig())
    pcm = (
        bytes(round(LEAD_IN_S / FRAME_S) * FRAME_BYTES)
        + speech
        + bytes(round(TAIL_S / FRAME_S) * FRAME_BYTES)
    )
    utterance: WhisperUtterance | None = None
    deadline = loop.time()
    t = 0.0
    for frame in frames(np.frombuffer(pcm, "<i2")):
        deadline += FRAME_S
        await asyncio.sleep(max(0.0, deadline - loop.time()))  # a caller speaking in real time
        result = endpointer.process(frame, t)
        t += FRAME_S
        if result.event == "start":
            utterance = session.begin(lambda _text: None)
            for early in result.preroll:
                utterance.push(early, False)
            utterance.push(frame, True)
        elif utterance is not None:
            utterance.push(frame, result.voiced)
            if result.event == "end":
                break
    if utterance is None:
        raise RuntimeError(f"the VAD found no speech in {text!r}")

    started = time.perf_counter()
    transcript = await utterance.finalize()
    finalize_s = time.perf_counter() - started

    started = time.perf_counter()
    stream = tts.synthesize(REPLY)
    await anext(stream)
    tts_first_audio_s = time.perf_counter() - started
    await stream.aclose()
    await session.aclose()
    return Sample(
        text,
        len(speech) / 2 / 16_000,
        finalize_s,
        tts_first_audio_s,
        utterance.stats.served_by or "?",
        utterance.stats.decodes,
        transcript.text,
    )


def p(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] * 1000


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=4, help="times each sentence is spoken")
    parser.add_argument("--interim-interval-s", type=float, default=0.6, help="0 disables interims")
    parser.add_argument("--speculate-after-ms", type=int, default=20)
    parser.add_argument("--beam-size", type=int, default=5)
    args = parser.parse_args()

    stt = WhisperSTT(
        WhisperConfig(
            beam_size=args.beam_size,
            interim_interval_s=args.interim_interval_s,
            speculate_after_ms=args.speculate_after_ms,
        )
    )
    tts = HibariTTS(HibariConfig(seed=1))
    started = time.perf_counter()
    await asyncio.gather(stt.warm(), tts.warm())
    print(f"warm: {time.perf_counter() - started:.2f} s (both engines, in parallel)")

    speech = {text: b"".join([c async for c in tts.synthesize(text)]) for text in SENTENCES}
    samples: list[Sample] = []
    for _ in range(args.repeats):
        for text in SENTENCES:
            s = await run_utterance(stt, tts, text, speech[text])
            samples.append(s)
            print(
                f"{s.speech_s:4.2f} s speech  finalize {s.finalize_s * 1000:4.0f} ms ({s.served_by}, "
                f"{s.decodes} decodes)  tts {s.tts_first_audio_s * 1000:3.0f} ms  {s.transcript!r}"
            )

    finalize = [s.finalize_s for s in samples]
    first_audio = [s.tts_first_audio_s for s in samples]
    total = [a + b for a, b in zip(finalize, first_audio, strict=True)]
    print(
        f"\n{len(samples)} utterances, beam {args.beam_size}, interims every {args.interim_interval_s} s "
        f"(0 = off), speculation after {args.speculate_after_ms} ms unvoiced"
    )
    print(f"served by: {dict(Counter(s.served_by for s in samples))}")
    for name, values in (("finalize latency", finalize), ("tts first audio", first_audio), ("sum", total)):
        print(
            f"{name:>17}: p50 {p(values, 50):4.0f} ms   p95 {p(values, 95):4.0f} ms   max {max(values) * 1000:4.0f} ms"
        )


if __name__ == "__main__":
    asyncio.run(main())
