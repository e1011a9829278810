"""The `voicerun` command. Heavy imports happen inside each command, so `--help` is instant."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """Bad input from the user: printed as one line, exit status 2."""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="voicerun", description="Real-time voice agent runtime.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run a simulated call from a caller recording")
    run.add_argument("--workflow", required=True, metavar="PATH", help="workflow YAML file")
    run.add_argument("--input", required=True, metavar="CALLER.wav", help="the caller's side of the call")
    run.add_argument("--output", metavar="CALL.wav", help="write the call: caller left, agent right")
    run.add_argument("--report", metavar="REPORT.json", help="write transcript, metrics and usage")
    run.add_argument("--user-data", metavar="JSON", default="{}", help="values for {{user.*}} templates")
    run.add_argument(
        "--fast", action="store_true", help="run as fast as possible on the recording's timeline"
    )
    run.set_defaults(func=_cmd_run)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from ._logging import configure_logging
    from ._settings import Settings

    settings = Settings()
    configure_logging(settings.log_level, settings.log_format)
    try:
        code: int = args.func(args)
    except UsageError as exc:
        print(f"voicerun: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    return code


def _user_data(raw: str) -> dict[str, Any]:
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise UsageError(f"--user-data is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise UsageError("--user-data must be a JSON object")
    return data


def _cmd_run(args: argparse.Namespace) -> int:
    from pipeline import AudioFormatError, read_wav
    from workflows import TemplateError, WorkflowError, load_workflow

    from ._recording import call_from_recording

    try:
        workflow = load_workflow(args.workflow)
    except WorkflowError as exc:
        raise UsageError(str(exc)) from None
    try:
        caller = read_wav(args.input)
    except AudioFormatError as exc:
        raise UsageError(str(exc)) from None
    user = _user_data(args.user_data)
    try:
        record, mix = asyncio.run(call_from_recording(workflow, caller, fast=args.fast, user_data=user))
    except TemplateError as exc:
        raise UsageError(f"{args.workflow}: {exc}") from None

    from pipeline import write_wav

    from ._report import latency_table, report_dict, transcript_text

    if args.output:
        write_wav(args.output, list(mix))
    if args.report:
        Path(args.report).parent.mkdir(parents=True, exist_ok=True)
        Path(args.report).write_text(json.dumps(report_dict(record), indent=2) + "\n")
    summary = record.summary
    assert summary is not None
    print(
        f"call {record.call_id}  workflow {record.workflow_slug}  {summary.duration_s:.1f} s  ended: {summary.reason}"
    )
    print(transcript_text(record))
    print()
    print(latency_table(list(summary.turns)))
    if args.output:
        print(f"call audio: {args.output}")
    if args.report:
        print(f"report:     {args.report}")
    for fault in record.faults:
        print(f"fault: {fault}", file=sys.stderr)
    return EXIT_OK
