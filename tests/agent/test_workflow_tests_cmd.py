"""run_workflow_tests (`voicerun test`): a line per test, the totals last, exit status 1 on failure."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest

from agent._workflow_tests import run_workflow_tests
from pipeline import LLM, LLMEvent, Message, TextDelta, ToolCall, ToolCallRequest, ToolSpec
from workflows import Workflow

EXAMPLES = Path(__file__).resolve().parents[2] / "workflows" / "examples"

RULES_WORKFLOW = """\
version: 1
slug: desk
start: host
tools:
  lookup_booking:
    description: Find a booking.
    parameters:
      type: object
      properties: {name: {type: string}}
    http: {url: "https://bookings.invalid/find?name={{args.name}}"}
agents:
  host:
    instructions: Front desk.
    greeting: Hello!
    tools: [lookup_booking, end_call]
    rules:
      - keywords: [hours, open]
        say: We open at five.
      - keywords: [booking]
        say: Let me look that up.
        tool: {name: lookup_booking, arguments: {name: "{{user.name}}"}}
      - keywords: [pay]
        say: Passing you to payments.
        handoff: payments
      - match: "\\\\bbye\\\\b"
        say: Goodbye!
        end_call: true
    fallback: Sorry?
  payments:
    instructions: Payments.
    greeting: Payments here.
variables:
  name: {type: string}
tests:
  - name: hours and goodbye
    steps:
      - user: When are you open?
        expect: {reply: "open at five", agent: host, end_call: false}
      - user: ok bye
        expect: {reply: goodbye, end_call: true}
  - name: booking uses the canned result
    user_data: {name: Ada}
    tool_results: {lookup_booking: {found: true}}
    steps:
      - user: I have a booking
        expect:
          tool_calls: [{name: lookup_booking, arguments: {name: Ada}}]
          reply: look that up
  - name: payment hands off
    steps:
      - user: I want to pay
        expect: {handoff: payments, agent: payments, reply: "payments here"}
"""

FAILING = RULES_WORKFLOW.replace('reply: "open at five"', 'reply: "open at six"').replace(
    "{name: Ada}}]", "{name: Bob}}]"
)


def run(tmp_path: Path, *texts: str, llms=None) -> tuple[int, list[str]]:  # type: ignore[no-untyped-def]
    paths = []
    for i, text in enumerate(texts):
        p = tmp_path / f"wf{i}.yaml"
        p.write_text(text)
        paths.append(p)
    out = io.StringIO()
    code = run_workflow_tests(paths, out=out, llms=llms)
    return code, out.getvalue().splitlines()


def test_passing_tests_print_pass_lines_and_exit_0(tmp_path: Path) -> None:
    code, lines = run(tmp_path, RULES_WORKFLOW)
    assert lines == [
        "PASS desk: hours and goodbye",
        "PASS desk: booking uses the canned result",
        "PASS desk: payment hands off",
        "3 passed, 0 failed",
    ]
    assert code == 0


def test_failures_name_the_step_and_what_differed(tmp_path: Path) -> None:
    code, lines = run(tmp_path, FAILING)
    assert code == 1
    assert (
        lines[0]
        == "FAIL desk: hours and goodbye — step 1: expected reply /open at six/, got 'We open at five.'"
    )
    assert lines[1] == (
        'FAIL desk: booking uses the canned result — step 1: expected tool calls [lookup_booking(name="Bob")], '
        'got [lookup_booking(name="Ada")]'
    )
    assert lines[2] == "PASS desk: payment hands off"
    assert lines[-1] == "1 passed, 2 failed"


def test_wrong_agent_handoff_and_end_call_are_reported(tmp_path: Path) -> None:
    text = RULES_WORKFLOW.replace(
        'expect: {handoff: payments, agent: payments, reply: "payments here"}',
        "expect: {agent: host}",
    ).replace("expect: {reply: goodbye, end_call: true}", "expect: {end_call: false}")
    code, lines = run(tmp_path, text)
    assert code == 1
    assert lines[0] == (
        "FAIL desk: hours and goodbye — step 2: expected end_call: false, got true (the call ended)"
    )
    assert lines[2] == "FAIL desk: payment hands off — step 1: expected agent host, got payments"
    assert lines[-1] == "1 passed, 2 failed"


def test_a_file_that_does_not_load_is_a_failure(tmp_path: Path) -> None:
    code, lines = run(tmp_path, "version: 1\nslug: x\n", RULES_WORKFLOW)
    assert code == 1
    assert lines[0].startswith("FAIL ") and "wf0.yaml" in lines[0]
    assert lines[-1] == "3 passed, 1 failed"


def test_an_llm_agent_is_tested_against_the_given_llm(tmp_path: Path) -> None:
    text = """\
version: 1
slug: llm-desk
start: host
defaults: {llm: {provider: openai}}  # replaced by the scripted LLM given to the runner
agents:
  host:
    instructions: Host.
    handoffs: [{to: payments, description: The caller wants to pay.}]
  payments:
    instructions: Payments.
tests:
  - name: transfer
    steps:
      - user: pay please
        expect: {handoff: payments, reply: "card number", tool_calls: []}
"""

    class Scripted(LLM):
        name = model = "scripted"

        def __init__(self, agent: str) -> None:
            self.agent = agent

        async def chat(
            self, messages: Sequence[Message], tools: Sequence[ToolSpec] = ()
        ) -> AsyncIterator[LLMEvent]:
            if self.agent == "host":
                yield ToolCallRequest(call=ToolCall("c1", "transfer_to_payments", {}))
            else:
                yield TextDelta(text="Your card number, please.")

    def llms(workflow: Workflow, agent: str) -> LLM:
        return Scripted(agent)

    code, lines = run(tmp_path, text, llms=llms)
    assert lines == ["PASS llm-desk: transfer", "1 passed, 0 failed"] and code == 0


def test_an_unavailable_llm_provider_fails_the_test_clearly(tmp_path: Path) -> None:
    text = RULES_WORKFLOW.replace("start: host\n", "start: host\ndefaults: {llm: {provider: nope}}\n")
    code, lines = run(tmp_path, text)
    assert code == 1
    assert (
        lines[0].startswith("FAIL ") and ":4:28: defaults.llm.provider: unknown provider 'nope'" in lines[0]
    )


HUNG_TOOLS = """\
import time


def spin() -> None:
    while True:
        pass


def nap() -> None:
    time.sleep(10**6)


def ok() -> dict[str, bool]:
    print("debugging output of a tool")
    return {"ok": True}
"""

HUNG_WORKFLOW = """\
version: 1
slug: hung
start: host
tools:
  spin: {description: Spins., python: "hung_tools:spin", timeout_s: 0.5}
  nap: {description: Sleeps., python: "hung_tools:nap", timeout_s: 0.5}
  ok: {description: Answers., python: "hung_tools:ok"}
agents:
  host:
    instructions: Host.
    tools: [spin, nap, ok]
    rules:
      - {keywords: [spin], tool: {name: spin}, say: Spinning.}
      - {keywords: [nap], tool: {name: nap}, say: Napping.}
      - {keywords: [ok], tool: {name: ok}, say: Fine.}
tests:
  - name: hung tools time out and the next one runs
    steps:
      - {user: spin, expect: {tool_calls: [{name: spin}], reply: spinning}}
      - {user: nap, expect: {tool_calls: [{name: nap}], reply: napping}}
      - {user: ok, expect: {tool_calls: [{name: ok}], reply: fine}}
  - name: a later test still runs tools
    steps:
      - {user: ok, expect: {tool_calls: [{name: ok}]}}
"""


def test_sync_tools_that_never_return_let_voicerun_test_finish_and_exit(tmp_path: Path) -> None:
    # Their threads used to keep the process alive after the summary was due: the hard timeout
    # of the subprocess is the failure guard.
    (tmp_path / "hung_tools.py").write_text(HUNG_TOOLS)
    workflow = tmp_path / "hung.yaml"
    workflow.write_text(HUNG_WORKFLOW)
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, "-m", "agent", "test", str(workflow)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=tmp_path,
    )
    assert proc.stdout.splitlines() == [
        "PASS hung: hung tools time out and the next one runs",
        "PASS hung: a later test still runs tools",
        "2 passed, 0 failed",
    ], proc.stderr
    assert proc.returncode == 0
    assert "tool spin: no result within 0.5 s" in proc.stderr
    assert "tool nap: no result within 0.5 s" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert "debugging output of a tool" in proc.stderr  # stdout holds the result lines only


def test_a_provider_chain_the_runtime_refuses_fails_at_load_with_its_position(tmp_path: Path) -> None:
    # it used to pass validation and fail only once a test (or a call) built the providers
    text = RULES_WORKFLOW.replace("start: host\n", "start: host\ndefaults: {llm: [openai, rules]}\n")
    code, lines = run(tmp_path, text)
    assert code == 1
    assert lines[0].startswith("FAIL ") and lines[0].endswith(
        "wf0.yaml:4:26: defaults.llm.fallback.0.provider: llm fallback 'rules'/'local' is not supported: "
        "the agent's rules already run before any LLM"
    )
    assert lines[-1] == "0 passed, 1 failed"


def test_every_missed_expectation_of_a_step_is_named(tmp_path: Path) -> None:
    text = RULES_WORKFLOW.replace(
        'expect: {reply: "open at five", agent: host, end_call: false}',
        'expect: {reply: "open at six", agent: payments, handoff: payments, end_call: true}',
    )
    code, lines = run(tmp_path, text)
    assert code == 1
    assert lines[0] == (
        "FAIL desk: hours and goodbye — step 1: expected agent payments, got host; "
        "expected reply /open at six/, got 'We open at five.'; expected handoff to payments, got none; "
        "expected end_call: true, got false (the call went on)"
    )


PRINTING_TOOLS = """def chatty() -> dict[str, bool]:
    print("a sync tool's print")
    return {"ok": True}


async def chatty_async() -> dict[str, bool]:
    print("an async tool's print")
    return {"ok": True}
"""

PRINTING_WORKFLOW = """version: 1
slug: chatty
start: host
tools:
  chatty: {description: Prints., python: "printing_tools:chatty"}
  chatty_async: {description: Prints., python: "printing_tools:chatty_async"}
agents:
  host:
    instructions: Host.
    tools: [chatty, chatty_async]
    rules:
      - {keywords: [sync], tool: {name: chatty}, say: Done.}
      - {keywords: [async], tool: {name: chatty_async}, say: Done.}
tests:
  - name: prints
    steps:
      - {user: sync, expect: {tool_calls: [{name: chatty}]}}
      - {user: async, expect: {tool_calls: [{name: chatty_async}], reply: nope}}
"""


def test_stdout_holds_only_the_result_lines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "printing_tools.py").write_text(PRINTING_TOOLS)
    monkeypatch.syspath_prepend(str(tmp_path))
    workflow = tmp_path / "chatty.yaml"
    workflow.write_text(PRINTING_WORKFLOW)
    assert run_workflow_tests([workflow]) == 1
    out, err = capfd.readouterr()
    assert out.splitlines() == [
        "FAIL chatty: prints — step 2: expected reply /nope/, got 'Done.'",
        "0 passed, 1 failed",
    ]
    # (a sync tool's worker writes to the stderr it was started with: see the subprocess test above)
    assert "an async tool's print" in err
