"""`python -m bench.conversation`: generate the corpus (cached), run every call, print the table.

make bench-conversation                                  # today's settings
make bench-conversation BENCH_ARGS="--calls 6"           # a quick look
make bench-conversation BENCH_ARGS="--label model --turn end_of_turn=model"
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import asdict
from pathlib import Path

import structlog

from .corpus import call_dirs, generate
from .run import parse_overrides, run_calls
from .score import LEGEND, run_scores, summarize, table

OUT = Path("out/bench-conversation")


def main() -> None:
    p = argparse.ArgumentParser(prog="bench-conversation", description=__doc__.splitlines()[0])
    p.add_argument("--calls", type=int, default=None, help="only the first N calls of the corpus")
    p.add_argument("--label", default="current", help="name of this run (runs/LABEL/)")
    p.add_argument("--turn", action="append", default=[], metavar="KEY=VALUE",
                   help="override the workflow's defaults.turn (repeatable)")  # fmt: skip
    p.add_argument("--score-only", action="store_true", help="score the existing runs/LABEL/")
    p.add_argument("--source", type=Path, default=None,
                   help="run voicerun from this source tree (e.g. a git archive of a commit)")  # fmt: skip
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    turn = parse_overrides(args.turn)
    corpus = args.out / "corpus"
    generate(corpus)
    calls = list(call_dirs(corpus))[: args.calls]
    run_dir = args.out / "runs" / args.label
    if args.score_only:
        done = [run_dir / c.name for c in calls if (run_dir / c.name / "CALL.wav").exists()]
    else:
        done = run_calls(calls, run_dir, turn, args.source)
    run_dir.mkdir(parents=True, exist_ok=True)
    by_name = {c.name: c for c in calls}
    scores = run_scores([(by_name[d.name], d) for d in done])
    (run_dir / "scores.json").write_text(
        json.dumps(
            {
                "label": args.label,
                "turn": turn,
                "summary": summarize(scores),
                "calls": [asdict(s) for s in scores],
            },
            indent=1,
        )
        + "\n"
    )
    print()
    print(
        f"conversation benchmark: {args.label}  ({len(scores)} calls; details in {run_dir / 'scores.json'})"
    )
    for s in scores:
        if s.faults:
            print(f"{s.call}: {len(s.faults)} pipeline faults in the report, first: {s.faults[0]}")
    print(table(scores))
    print(LEGEND)


if __name__ == "__main__":
    main()
