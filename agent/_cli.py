"""The `voicerun` command. Heavy imports happen inside each command, so `--help` is instant."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pydantic import ValidationError

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
EXIT_SIGINT, EXIT_SIGTERM = 128 + signal.SIGINT, 128 + signal.SIGTERM

USER_DATA_MAX_BYTES = 1_000_000
USER_DATA_MAX_DEPTH = 32


class UsageError(Exception):
    """Bad input from the user: printed as one line, exit status 2."""


class CommandError(Exception):
    """A command failed for a reason outside the user's input: printed as one line, exit status 1."""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="voicerun", description="Real-time voice agent runtime.")
    p.add_argument("--version", action="version", version=f"voicerun {_version()}")
    # Commands whose output is a result log at warning unless VOICERUN_LOG_LEVEL says otherwise,
    # so log lines never fall between result lines; long-running services set "info".
    p.set_defaults(default_log_level="warning")
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

    load = sub.add_parser(
        "load",
        help="run many calls at once in this process and report latency, CPU and memory",
        description="Size a worker: run N concurrent calls of one workflow, each fed the caller "
        "recording at real-time pace, starting new ones as calls end until --total have run. "
        "Prints end of speech -> first agent audio (p50/p95, as the caller hears it), pipeline "
        "overhead, failures, CPU seconds per call-second and memory per call.",
    )
    load.add_argument("--workflow", required=True, metavar="PATH|SLUG", help="workflow YAML file or slug")
    load.add_argument("--input", required=True, metavar="CALLER.wav", help="what every caller says")
    load.add_argument("--calls", required=True, type=int, metavar="N", help="calls at once")
    load.add_argument("--total", type=int, metavar="M", help="calls to run in all (default: N)")
    load.add_argument(
        "--ramp",
        type=float,
        metavar="S",
        help="start the first N calls spread over S seconds (default: the recording's length)",
    )
    load.add_argument("--report", metavar="REPORT.json", help="write the figures as JSON")
    load.add_argument(
        "--instant-providers",
        action="store_true",
        help="replace every provider with one that answers at once: measures the pipeline alone",
    )
    load.add_argument(
        "--metered", action="store_true", help="report every call to the configured ledger, as a worker does"
    )
    load.set_defaults(func=_cmd_load)

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

    from ._api_cmd import add_api_commands
    from ._metering_cmd import add_metering_commands  # here: it imports this module
    from ._worker_cmd import add_worker_command

    add_metering_commands(sub)
    add_worker_command(sub)
    add_api_commands(sub)
    return p


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("voicerun")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown"


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
    level = settings.log_level if "log_level" in settings.model_fields_set else args.default_log_level
    configure_logging(level, settings.log_format)
    try:
        code: int = args.func(args)
    except UsageError as exc:
        print(f"voicerun: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except CommandError as exc:
        print(f"voicerun: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return EXIT_SIGINT
    except Exception as exc:  # the last line of defence: a bug still reads as one line
        import structlog

        structlog.get_logger("voicerun").debug("internal_error", exc_info=True)
        print(
            f"voicerun: internal error: {type(exc).__name__}: {exc} "
            "(a bug; VOICERUN_LOG_LEVEL=debug shows the traceback)",
            file=sys.stderr,
        )
        return EXIT_FAILED
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
    if len(raw.encode()) > USER_DATA_MAX_BYTES:
        raise UsageError(f"--user-data is larger than {USER_DATA_MAX_BYTES:,} bytes")
    # Bracket depth is counted before parsing: json recurses once per level and a deep enough
    # document exhausts the interpreter's stack.
    if _json_depth(raw) > USER_DATA_MAX_DEPTH:
        raise UsageError(f"--user-data is nested deeper than {USER_DATA_MAX_DEPTH} levels")
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise UsageError(f"--user-data is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise UsageError("--user-data must be a JSON object")
    return data


def _json_depth(text: str) -> int:
    """The deepest bracket nesting in a JSON text, ignoring brackets inside strings."""
    depth = deepest = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    return deepest


def _writable_file(raw: str | None, option: str) -> Path | None:
    """A path the command will write at the end, checked now, so a call is never run only to
    find that its results cannot be kept."""
    if raw is None:
        return None
    path = Path(raw)
    if path.is_dir():
        raise UsageError(f"{option} {path}: is a directory")
    if path.exists():
        if path.is_fifo() or path.is_socket():  # writing would wait for a reader forever
            raise UsageError(f"{option} {path}: not a regular file")
        if not os.access(path, os.W_OK):
            raise UsageError(f"{option} {path}: not writable")
        return path
    parent = path.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise UsageError(f"{option} {path}: {_existing_file(parent)} is a file, not a directory") from None
    except OSError as exc:
        raise UsageError(f"{option} {path}: cannot create {parent} ({exc.strerror or exc})") from None
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"{option} {path}: directory {parent} is not writable")
    return path


def _existing_file(path: Path) -> Path:
    """The first part of `path` that exists and is not a directory."""
    for part in [*reversed(path.parents), path]:
        if part.exists() and not part.is_dir():
            return part
    return path


def _cmd_run(args: argparse.Namespace) -> int:
    output = _writable_file(args.output, "--output")
    report = _writable_file(args.report, "--report")
    if output is not None and report is not None and output.resolve() == report.resolve():
        raise UsageError(f"--output and --report are the same file: {output}")
    workflow, caller = _workflow_and_caller(args)
    user = _user_data(args.user_data)
    from metering import MeteringError

    from ._report import price_catalog

    try:
        catalog = price_catalog()  # a broken operator price file stops the run before the call
    except MeteringError as exc:
        raise UsageError(str(exc)) from None
    run = _Run(args, output, report)
    try:
        with calls_errors(args.workflow):
            asyncio.run(run.call(workflow, caller, user, catalog))
    except asyncio.CancelledError:
        pass  # a second signal stopped the wait for the usage export; the results are written
    return run.exit_code()


def _workflow_and_caller(args: argparse.Namespace) -> tuple[Any, Any]:
    """--workflow and --input, or a UsageError naming what is wrong with them."""
    from pipeline import AudioFormatError, read_wav
    from workflows import WorkflowError

    try:
        workflow = _resolve_workflow(args.workflow, args.settings.workflows)
    except WorkflowError as exc:
        raise UsageError(str(exc)) from None
    try:
        caller = read_wav(args.input)
    except AudioFormatError as exc:
        raise UsageError(str(exc)) from None
    return workflow, caller


@contextmanager
def calls_errors(workflow_ref: str) -> Iterator[None]:
    """What running calls raises, as the command's one-line errors: the workflow's templates,
    variables or providers (usage), the ledger's configuration (usage) or the ledger itself."""
    from metering import LedgerConfigError, LedgerError
    from pipeline import ProviderError
    from workflows import TemplateError, VariableError

    from ._providers import ProviderConfigError

    try:
        yield
    except (TemplateError, VariableError, ProviderConfigError, ProviderError) as exc:
        raise UsageError(f"{workflow_ref}: {exc}") from None
    except LedgerConfigError as exc:  # found when the ledger opens, before any call
        raise UsageError(str(exc).splitlines()[0]) from None
    except LedgerError as exc:
        raise CommandError(str(exc).splitlines()[0]) from None


LOAD_MAX_CALLS = 10_000


def _cmd_load(args: argparse.Namespace) -> int:
    report = _writable_file(args.report, "--report")
    if not 1 <= args.calls <= LOAD_MAX_CALLS:
        raise UsageError(f"--calls must be between 1 and {LOAD_MAX_CALLS:,}, got {args.calls}")
    total = args.total if args.total is not None else args.calls
    if total < args.calls:
        raise UsageError(f"--total ({total}) must be at least --calls ({args.calls})")
    if args.ramp is not None and not 0 <= args.ramp <= 3600:
        raise UsageError(f"--ramp must be between 0 and 3600 seconds, got {args.ramp}")
    workflow, caller = _workflow_and_caller(args)
    from ._load_cmd import run_load_command

    return run_load_command(args, workflow, caller, total, report)


class _Run:
    """One `voicerun run`: the call, its results kept whatever ends it, and the exit status.

    SIGINT or SIGTERM ends the call as a hang-up would: the partial transcript is printed, the
    WAV and report written, and usage committed to the ledger. A signal once the results are kept
    (or a second one) stops waiting for the usage export; what is left goes with the next
    `metering export`.
    """

    def __init__(self, args: argparse.Namespace, output: Path | None, report: Path | None) -> None:
        self.args = args
        self.output = output
        self.report = report
        self.signals: list[signal.Signals] = []
        self.write_failed = False
        self.kept = False
        """The call's results are printed and written."""
        self.metering: Any = None

    async def call(self, workflow: Any, caller: Any, user: dict[str, Any], catalog: Any) -> None:
        from metering import open_metering

        from ._recording import recording_call

        ending: list[str] = []  # a signal before the call exists ends it the moment it does
        running: list[Any] = []
        loop = asyncio.get_running_loop()
        main_task = asyncio.current_task()
        assert main_task is not None

        def on_signal(sig: signal.Signals) -> None:
            self.signals.append(sig)
            if self.kept:  # the call is over: all that is left is waiting for the usage export
                print(f"voicerun: {sig.name}: not waiting for the usage export", file=sys.stderr)
                main_task.cancel()
            elif len(self.signals) == 1:
                print(
                    f"voicerun: {sig.name}: ending the call and keeping what it has "
                    "(again to stop waiting for the usage export)",
                    file=sys.stderr,
                )
                ending.append("interrupted" if sig == signal.SIGINT else "terminated")
                for call in running:
                    call.end(ending[0])
            else:
                main_task.cancel()

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_signal, sig)
        try:
            async with open_metering(
                self.args.settings.metering(), catalog=catalog, drain_s=10.0
            ) as metering:
                self.metering = metering
                async with recording_call(
                    workflow, caller, fast=self.args.fast, user_data=user, meter=metering.meter
                ) as (call, recording):
                    running.append(call)
                    if ending:
                        call.end(ending[0])
                    # Its own task, so the call's log context stays with the call.
                    record = await asyncio.create_task(call.run())
                    # Results first: the export below may be stopped by a second signal.
                    self._keep(record, recording.mix())
            self._print_losses()
            self._print_export()
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)

    def _keep(self, record: Any, mix: Any) -> None:
        """Print the transcript, then write each file; one failing never loses the others."""
        from pipeline import write_wav

        from ._report import latency_table, report_dict, transcript_text

        summary = record.summary
        assert summary is not None
        print(
            f"call {record.call_id}  workflow {record.workflow_slug}  {summary.duration_s:.1f} s  "
            f"ended: {summary.reason}"
        )
        print(transcript_text(record))
        print()
        print(latency_table(list(summary.turns)))
        if self.output is not None:
            self._write(self.output, "call audio:", lambda: write_wav(self.output, list(mix)))
        if self.report is not None:
            text = json.dumps(report_dict(record), indent=2) + "\n"
            report = self.report
            self._write(report, "report:    ", lambda: report.write_text(text))
        for fault in record.faults:
            print(f"fault: {fault}", file=sys.stderr)
        sys.stdout.flush()
        self.kept = True

    def _write(self, path: Path, label: str, write: Any) -> None:
        try:
            write()
        except OSError as exc:
            self.write_failed = True
            print(f"voicerun: error: cannot write {path}: {exc.strerror or exc}", file=sys.stderr)
        else:
            print(f"{label} {path}")

    def _print_export(self) -> None:
        final = self.metering.final if self.metering is not None else None
        if final is not None:
            print(f"usage export: {final.delivered} delivered, {final.pending} pending, {final.dead} dead")

    def _print_losses(self) -> None:
        """Usage that never reached the ledger will be neither priced nor billed: say so, and
        fail the command (a script running calls must not take this for success)."""
        for loss in self.metering.lost if self.metering is not None else ():
            calls = ", ".join(loss.call_ids)
            print(
                f"voicerun: error: usage lost: {loss.records} records of call {calls} never reached "
                f"the ledger ({loss.reason})",
                file=sys.stderr,
            )

    def exit_code(self) -> int:
        if self.metering is not None and self.metering.lost:
            return EXIT_FAILED
        if self.signals:
            return EXIT_SIGINT if self.signals[0] == signal.SIGINT else EXIT_SIGTERM
        return EXIT_FAILED if self.write_failed else EXIT_OK


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
