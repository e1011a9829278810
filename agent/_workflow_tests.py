"""`voicerun test`: run the `tests` of workflow files in text mode (no audio).

Each test is a fresh conversation with the test's user_data, its tool_results standing in for
the tools they name, and the configured LLM (offline: the rules). Each step's caller line goes
through the same runtime a call uses; what the agents said and did is checked against `expect`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import aiohttp
import structlog

from pipeline import LLM, EndCallEvent, HandoffEvent, TextDelta, ToolResultEvent
from workflows import (
    CallState,
    ExpectSpec,
    TestSpec,
    ToolBox,
    ToolCallSpec,
    Workflow,
    WorkflowConversation,
    WorkflowError,
    WorkflowRuntimeError,
    load_workflow,
)

from ._providers import ProviderPool, UnknownProviderError

LLMChooser = Callable[[Workflow, str], LLM | None]
"""(workflow, agent name) -> the agent's LLM, None for the rules."""

_REPLY_SHOWN_CHARS = 120


@dataclass
class _Step:
    reply: str = ""
    tool_calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    handoffs: list[str] = field(default_factory=list)
    end_call: bool = False


def _files(paths: Sequence[str | Path]) -> list[Path]:
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out.extend(sorted(q for q in p.iterdir() if q.suffix in (".yaml", ".yml")))
        else:
            out.append(p)
    return out


def _shown(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _REPLY_SHOWN_CHARS else text[: _REPLY_SHOWN_CHARS - 3] + "..."


def _call_text(name: str, args: Mapping[str, Any]) -> str:
    inner = ", ".join(f"{k}={json.dumps(v, default=str)}" for k, v in args.items())
    return f"{name}({inner})"


def _tool_calls_match(expected: Sequence[ToolCallSpec], got: Sequence[tuple[str, dict[str, Any]]]) -> bool:
    if [e.name for e in expected] != [name for name, _ in got]:
        return False
    return all(
        all(k in args and args[k] == v for k, v in e.arguments.items())
        for e, (_, args) in zip(expected, got, strict=True)
    )


def _check(expect: ExpectSpec, step: _Step, agent: str) -> str | None:
    """Every expectation the step missed, each as expected-vs-got; None if it met them all."""
    missed = []
    if expect.agent is not None and agent != expect.agent:
        missed.append(f"expected agent {expect.agent}, got {agent}")
    if expect.reply is not None and not re.search(expect.reply, step.reply, re.IGNORECASE):
        missed.append(f"expected reply /{expect.reply}/, got '{_shown(step.reply)}'")
    if expect.tool_calls is not None and not _tool_calls_match(expect.tool_calls, step.tool_calls):
        want = ", ".join(_call_text(e.name, e.arguments) for e in expect.tool_calls) or "none"
        got = ", ".join(_call_text(n, a) for n, a in step.tool_calls) or "none"
        missed.append(f"expected tool calls [{want}], got [{got}]")
    if expect.handoff is not None and expect.handoff not in step.handoffs:
        got = ", ".join(step.handoffs) or "none"
        missed.append(f"expected handoff to {expect.handoff}, got {got}")
    if expect.end_call is not None and expect.end_call != step.end_call:
        missed.append(
            "expected end_call: true, got false (the call went on)"
            if expect.end_call
            else "expected end_call: false, got true (the call ended)"
        )
    return "; ".join(missed) or None


async def _run_one(
    workflow: Workflow, test: TestSpec, llm_for: LLMChooser, http: aiohttp.ClientSession
) -> str | None:
    """None if the test passes, else why it failed."""
    structlog.contextvars.bind_contextvars(workflow=workflow.slug, test=test.name, agent=workflow.start)
    try:
        state = CallState.bind(workflow, test.user_data)
        boxes = {
            name: ToolBox(workflow, spec.tools, state, http=http, canned=test.tool_results)
            for name, spec in workflow.agents.items()
        }
        llms = {name: llm_for(workflow, name) for name in workflow.agents}
        conv = WorkflowConversation(workflow, state, boxes.__getitem__, llms.__getitem__)
        greeting = conv.greeting()
    except (WorkflowRuntimeError, UnknownProviderError, ValueError) as exc:
        return f"setup: {exc}"
    if greeting:
        conv.add_assistant(greeting)
    ended = False
    transfers = {f"transfer_to_{a}" for a in workflow.agents} | {"transfer_back"}
    for n, spec in enumerate(test.steps, start=1):
        if ended:
            return f"step {n}: the call already ended"
        step = _Step()
        try:
            async for ev in conv.respond(spec.user):
                if isinstance(ev, TextDelta):
                    step.reply += ev.text
                elif isinstance(ev, ToolResultEvent):
                    if ev.call.name not in transfers:
                        step.tool_calls.append((ev.call.name, dict(ev.call.arguments)))
                    step.end_call = step.end_call or ev.outcome.end_call
                elif isinstance(ev, HandoffEvent):
                    step.handoffs.append(ev.to)
                elif isinstance(ev, EndCallEvent):
                    step.end_call = True
        except Exception as exc:  # the test fails; the run goes on to the next one
            return f"step {n}: {type(exc).__name__}: {exc}"
        step.reply = " ".join(step.reply.split())
        problem = _check(spec.expect, step, conv.current_agent)
        if problem is not None:
            return f"step {n}: {problem}"
        ended = step.end_call
    return None


def _default_llms() -> LLMChooser:
    pool = ProviderPool()

    def choose(workflow: Workflow, agent: str) -> LLM | None:
        return pool.llm(workflow.llm_for(agent))

    return choose


async def _run_all(paths: Sequence[str | Path], llm_for: LLMChooser, out: TextIO) -> tuple[int, int]:
    passed = failed = 0
    async with aiohttp.ClientSession() as http:
        for path in _files(paths):
            try:
                workflow = load_workflow(path)
            except WorkflowError as exc:
                print(f"FAIL {exc}", file=out)  # the message names the file
                failed += 1
                continue
            for test in workflow.tests:
                # its own task: a handoff's log binding stays with the test
                problem = await asyncio.create_task(_run_one(workflow, test, llm_for, http))
                if problem is None:
                    passed += 1
                    print(f"PASS {workflow.slug}: {test.name}", file=out)
                else:
                    failed += 1
                    print(f"FAIL {workflow.slug}: {test.name} — {problem}", file=out)
    return passed, failed


def run_workflow_tests(
    paths: Sequence[str | Path], *, llms: LLMChooser | None = None, out: TextIO | None = None
) -> int:
    """Run every test of the workflow files (or directories of them) in paths.

    Prints a line per test (`PASS slug: name` or `FAIL slug: name — step N: why`; a file that
    does not load is one failure), then `N passed, N failed` alone on the last line. Returns the
    exit status: 1 if anything failed, else 0. llms picks each agent's LLM (default: the
    configured providers, so `rules` agents answer with their rules and fallback).
    """
    stream = out if out is not None else sys.stdout
    # stdout holds the result lines only: whatever else prints there while tests run (a tool's
    # debugging print, a library's notice) goes to stderr with the logs
    with contextlib.redirect_stdout(sys.stderr):
        passed, failed = asyncio.run(_run_all(paths, llms or _default_llms(), stream))
    print(f"{passed} passed, {failed} failed", file=stream)
    return 1 if failed else 0
