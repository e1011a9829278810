"""How well the scorer tells which answer agent audio belongs to, on the agent's own renders.

    python -m bench.conversation.selfcheck

1. Every answer, cut into spans as the scorer cuts CALL.wav: each span labelled in order, as in
   a call. 2. Fragments of 0.3-2 s cut at random points (mid-word, as a stale tail or a resumed
   reply starts), labelled with no context: right, unlabelled, or wrong.
"""

from __future__ import annotations

import asyncio
import logging

import numpy as np
import structlog

from pipeline import SAMPLE_RATE
from workflows import load_workflow

from .corpus import WORKFLOW, answers, render_answers
from .score import WhisperTranscriber, activity, label, spans, transcribe_spans, words

FRAGMENTS_PER_ANSWER = 12


async def main() -> None:
    workflow = load_workflow(WORKFLOW)
    texts = answers(workflow)
    renders = await render_answers(workflow, texts)
    ref = {k: words(v) for k, v in texts.items()}
    whisper = WhisperTranscriber()
    rng = np.random.default_rng(7)
    try:
        right = unlabelled = wrong = 0
        for answer, pcm in renders.items():
            for s in await transcribe_spans(pcm, spans(activity(pcm)), whisper, texts):
                if s.answer is None:
                    unlabelled += 1
                elif s.answer == answer:
                    right += 1
                else:
                    wrong += 1
                    print(f"  span of {answer} labelled {s.answer}: {s.text!r}")
        n = right + unlabelled + wrong
        print(f"spans in order: {n}; right {right}, unlabelled {unlabelled}, wrong {wrong}")
        by_len: dict[str, list[int]] = {}
        for answer, pcm in renders.items():
            for _ in range(FRAGMENTS_PER_ANSWER):
                length = rng.uniform(0.3, 2.0)
                start = rng.uniform(0, pcm.size / SAMPLE_RATE - length)
                cut = pcm[round(start * SAMPLE_RATE) : round((start + length) * SAMPLE_RATE)]
                if not activity(cut).any():
                    continue
                got = label(await whisper(cut), ref)[0]
                outcome = 0 if got == answer else 1 if got is None else 2
                if outcome == 2:
                    print(f"  {length:.1f} s fragment of {answer} labelled {got}")
                by_len.setdefault("< 0.8 s" if length < 0.8 else ">= 0.8 s", []).append(outcome)
        for k, v in sorted(by_len.items()):
            print(f"fragments {k}: {len(v)}; right {v.count(0)}, unlabelled {v.count(1)}, wrong {v.count(2)}")
    finally:
        await whisper.aclose()


if __name__ == "__main__":
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    asyncio.run(main())
