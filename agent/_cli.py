"""The `voicerun` command. Heavy imports happen inside each command, so `--help` is instant."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pydantic import ValidationError

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """Bad input from the user: printed as one line, exit status 2."""


class CommandError(Exception):
    """A command failed for a reason outside the user's input: printed as one line, exit status 1."""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="voicerun", description="Real-time voice agent runtime.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run a simulated call from a caller recording")
    run.add_argument(
        "--workflow",
        required=True,
        metavar="PATH|SLUG",
        help="workflow YAML file, or a slug in $VOICERUN_WORKFLOWS",
    )
    run.add_argument("--input", required=True, metavar="CALLER.wav", help="the caller's side of the call")
    run.add_argument("--output", metavar="CALL.wav", help="write the call: caller left, agent right")
    run.add_argument("--report", metavar="REPORT.json", help="write transcript, metrics and usage")
    run.add_argument("--user-data", metavar="JSON", default="{}", help="values for {{user.*}} templates")
    run.add_argument(
        "--fast", action="store_true", help="run as fast as possible on the recording's timeline"
    )
    run.set_defaults(func=_cmd_run)

    validate = sub.add_parser(
        "validate",
        help="check workflow files; print every problem as PATH:LINE:COL: message",
        description="Check workflow files and print every problem as PATH:LINE:COL: message. "
        "Exit status 0 when no file has an error (warnings alone pass), 1 otherwise.",
    )
    validate.add_argument(
        "paths", nargs="+", metavar="PATH", help="workflow YAML file, or a directory of them"
    )
    validate.set_defaults(func=_cmd_validate)

    test = sub.add_parser(
        "test",
        help="run the workflows' scripted tests in text mode",
        description="Run each workflow's `tests` without audio, against the configured LLM or, "
        "offline, the rules. A line per test, then 'N passed, N failed'; exit 1 on any failure.",
    )
    test.add_argument("paths", nargs="+", metavar="PATH", help="workflow YAML file, or a directory of them")
    test.set_defaults(func=_cmd_test)

    schema = sub.add_parser("schema", help="print the workflow language as a JSON Schema (for editors)")
    schema.set_defaults(func=_cmd_schema)

    from ._metering_cmd import add_metering_commands  # here: it imports this module

    add_metering_commands(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from pydantic import ValidationError

    from ._logging import configure_logging
    from ._settings import Settings

    try:
        settings = Settings()
    except ValidationError as exc:
        for problem in _settings_problems(exc):
            print(f"voicerun: error: {problem}", file=sys.stderr)
        return EXIT_USAGE
    args.settings = settings
    configure_logging(settings.log_level, settings.log_format)
    try:
        code: int = args.func(args)
    except UsageError as exc:
        print(f"voicerun: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except CommandError as exc:
        print(f"voicerun: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130
    return code


def _settings_problems(exc: ValidationError) -> list[str]:
    """One line per problem in the environment, naming the variable (never echoing its value,
    which may be a secret)."""
    problems = []
    for error in exc.errors():
        message = str(error["msg"]).removeprefix("Value error, ")
        if error["loc"]:
            name = "__".join(str(part) for part in error["loc"]).upper()
            if not name.startswith("VOICERUN_") and name != "DATABASE_URL":
                name = f"VOICERUN_{name}"
            message = f"{name}: {message}"
        problems.append(message)
    return problems


def _user_data(raw: str) -> dict[str, Any]:
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise UsageError(f"--user-data is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise UsageError("--user-data must be a JSON object")
    return data


def _cmd_run(args: argparse.Namespace) -> int:
    from pipeline import AudioFormatError, ProviderError, read_wav
    from workflows import TemplateError, VariableError, WorkflowError

    from ._providers import ProviderConfigError

    try:
        workflow = _resolve_workflow(args.workflow, args.settings.workflows)
    except WorkflowError as exc:
        raise UsageError(str(exc)) from None
    try:
        caller = read_wav(args.input)
    except AudioFormatError as exc:
        raise UsageError(str(exc)) from None
    user = _user_data(args.user_data)
    from metering import LedgerError, MeteringError

    from ._report import price_catalog

    try:
        catalog = price_catalog()  # a broken operator price file stops the run before the call
    except MeteringError as exc:
        raise UsageError(str(exc)) from None
    try:
        record, mix, metering = asyncio.run(_metered_call(args, workflow, caller, user, catalog))
    except (TemplateError, VariableError, ProviderConfigError, ProviderError) as exc:
        raise UsageError(f"{args.workflow}: {exc}") from None
    except LedgerError as exc:
        raise CommandError(str(exc).splitlines()[0]) from None

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
    if metering.final is not None:
        f = metering.final
        print(f"usage export: {f.delivered} delivered, {f.pending} pending, {f.dead} dead")
    for fault in record.faults:
        print(f"fault: {fault}", file=sys.stderr)
    return EXIT_OK


async def _metered_call(
    args: argparse.Namespace, workflow: Any, caller: Any, user: dict[str, Any], catalog: Any
) -> tuple[Any, Any, Any]:
    """The call, recorded in the ledger; with a usage API configured, its usage is exported
    before the command exits (up to 10 s; what is left goes with the next `metering export`)."""
    from ._metering import open_metering
    from ._recording import call_from_recording

    async with open_metering(args.settings, catalog=catalog, drain_s=10.0) as metering:
        record, mix = await call_from_recording(
            workflow, caller, fast=args.fast, user_data=user, meter=metering.meter
        )
    return record, mix, metering


def _resolve_workflow(ref: str, registry_dir: Path) -> Any:
    """A path to a workflow file, or else a slug looked up in the workflows directory."""
    from workflows import UnknownWorkflowError, WorkflowRegistry, load_workflow

    path = Path(ref)
    if path.exists() or path.suffix in (".yaml", ".yml") or "/" in ref:
        return load_workflow(path)
    try:
        return WorkflowRegistry.load(registry_dir).get(ref)
    except UnknownWorkflowError as exc:
        raise UsageError(f"{ref}: no such file, and {exc}") from None


def _workflow_files(paths: Sequence[str]) -> list[Path]:
    files = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            found = sorted([*p.glob("*.yaml"), *p.glob("*.yml")])
            if not found:
                raise UsageError(f"{p}: no .yaml or .yml files in this directory")
            files.extend(found)
        else:
            files.append(p)
    return files


def _count(n: int, what: str) -> str:
    return f"{n} {what}{'' if n == 1 else 's'}"


def _cmd_validate(args: argparse.Namespace) -> int:
    from workflows import validate_file

    files = _workflow_files(args.paths)
    errors = warnings = 0
    for path in files:
        for problem in validate_file(path):
            print(problem)
            if problem.severity == "error":
                errors += 1
            else:
                warnings += 1
    print(
        f"{_count(len(files), 'file')} checked: {_count(errors, 'error')}, {_count(warnings, 'warning')}",
        file=sys.stderr,
    )
    return EXIT_FAILED if errors else EXIT_OK


def _cmd_test(args: argparse.Namespace) -> int:
    from ._workflow_tests import run_workflow_tests

    return run_workflow_tests([str(p) for p in _workflow_files(args.paths)])


def _cmd_schema(args: argparse.Namespace) -> int:
    from workflows import workflow_json_schema

    print(json.dumps(workflow_json_schema(), indent=2))
    return EXIT_OK
