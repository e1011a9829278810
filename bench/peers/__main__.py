"""`python -m bench.peers`: build each peer's venv (once per pins), run the frameworks interleaved,
each run in a fresh process, then print one markdown table and write out/bench-peers/results.json.

    make bench-peers                                            # calls 1 10 50 100, 2 repeats
    make bench-peers BENCH_ARGS="--calls 1 10 --repeats 1"      # a quick look
    make bench-peers BENCH_ARGS="--frameworks livekit-agents pipecat-ai"
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

from .frameworks import FRAMEWORKS, REPO, default_timeout_s
from .report import markdown, summarize
from .runs import Run, run_once
from .venvs import VenvError, ensure_venv


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench-peers", description=(__doc__ or "").splitlines()[0])
    p.add_argument("--calls", type=int, nargs="+", default=[1, 10, 50, 100], help="concurrent calls")
    p.add_argument("--repeats", type=int, default=2, help="runs of each framework per calls count")
    p.add_argument("--frameworks", nargs="+", choices=list(FRAMEWORKS), default=list(FRAMEWORKS))
    p.add_argument("--timeout", type=float, default=None, help="seconds per run (default: by length)")
    p.add_argument("--python", default="python3", help="interpreter the peers' venvs are made with")
    p.add_argument("--out", type=Path, default=REPO / "out/bench-peers")
    return p.parse_args()


def machine_line(load_at_start: float, runs: list[Run]) -> str:
    with open("/proc/meminfo") as f:
        mem_gib = int(next(line for line in f if line.startswith("MemTotal:")).split()[1]) / 2**20
    versions = sorted(
        {f"{r.framework} {r.result['version']}" for r in runs if r.result and "version" in r.result}
    )
    return (
        f"Machine: {os.cpu_count()} cores, {mem_gib:.0f} GiB, Python {platform.python_version()}, "
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC; load average {load_at_start:.2f} at start, "
        f"{os.getloadavg()[0]:.2f} at end" + (f"; {', '.join(versions)}" if versions else "") + "."
    )


def build_venvs(args: argparse.Namespace) -> tuple[dict[str, Path], dict[str, str]]:
    pythons: dict[str, Path] = {}
    skipped: dict[str, str] = {}
    for name in args.frameworks:
        requirements = FRAMEWORKS[name].requirements
        if requirements is None:
            continue
        try:
            pythons[name] = ensure_venv(args.out / "venvs", name, requirements, args.python)
        except VenvError as e:
            skipped[name] = f"venv not built: {e}"
            print(f"{name} skipped: {e}", file=sys.stderr)
    return pythons, skipped


def run_all(args: argparse.Namespace, pythons: dict[str, Path], skipped: dict[str, str]) -> list[Run]:
    runs: list[Run] = []
    total = len(args.calls) * args.repeats * len(args.frameworks)
    for n in args.calls:
        for repeat in range(1, args.repeats + 1):
            for name in args.frameworks:
                if name in skipped:
                    runs.append(Run(name, n, repeat, status="skipped", detail=skipped[name]))
                    _progress(len(runs), total, runs[-1])
                    continue
                command = FRAMEWORKS[name].command(pythons.get(name), n)
                run = run_once(name, n, repeat, command, args.timeout or default_timeout_s(n))
                if name == "voicerun" and run.status == "failed" and run.result is None:
                    # Most likely bench/overhead.py without --json: say so once, run the peers.
                    skipped[name] = f"`{' '.join(command)}` gave no JSON ({run.detail})"
                    run.status, run.detail = "skipped", skipped[name]
                    print(f"voicerun skipped from now on: {run.detail}", file=sys.stderr)
                runs.append(run)
                _progress(len(runs), total, run)
    return runs


def _progress(i: int, total: int, run: Run) -> None:
    r = run.result or {}
    numbers = (
        f"p50 {r['p50_ms']:.2f} ms, p95 {r['p95_ms']:.2f} ms, {r['turns']} turns"
        if r.get("p50_ms") is not None
        else ""
    )
    print(
        f"[{i}/{total}] {run.framework} calls={run.calls} repeat={run.repeat}: {run.status} "
        f"{numbers} {run.detail} ({run.seconds:.0f} s)",
        file=sys.stderr,
        flush=True,
    )


def main() -> None:
    args = parse_args()
    started = time.monotonic()
    load_at_start = os.getloadavg()[0]
    pythons, skipped = build_venvs(args)
    runs = run_all(args, pythons, skipped)
    rows = summarize(runs, args.frameworks, args.calls)
    machine = machine_line(load_at_start, runs)
    print(markdown(rows, machine))
    args.out.mkdir(parents=True, exist_ok=True)
    results = {
        "machine": machine,
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "seconds": time.monotonic() - started,
        "rows": [asdict(row) for row in rows],
        "runs": [asdict(run) for run in runs],
    }
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nraw results: {args.out / 'results.json'} ({time.monotonic() - started:.0f} s)", file=sys.stderr)


if __name__ == "__main__":
    main()
