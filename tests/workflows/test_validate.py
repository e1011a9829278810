"""`voicerun validate`: every problem in a workflow file, each at its exact line and column."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator
from ruamel.yaml import YAML

from workflows import (
    Problem,
    WorkflowError,
    load_workflow_text,
    validate_file,
    validate_text,
    workflow_json_schema,
)

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "workflows" / "examples"

# Line numbers in the comments are the ones the tests below refer to.
BASE = """\
version: 1
slug: shop
start: desk
variables:
  name: {type: string}
vars:
  order: {type: string}
tools:
  lookup:
    description: Look up an order.
    parameters:
      type: object
      properties:
        order_id: {type: string}
      required: [order_id]
    http:
      url: "https://shop.example/orders/{{args.order_id}}"
      save: {order: status}
agents:
  desk:
    instructions: Help {{user.name}}.
    tools: [lookup, end_call]
    handoffs:
      - to: returns
    rules:
      - keywords: [refund]
        handoff: returns
      - keywords: [order]
        tool: {name: lookup, arguments: {order_id: A1}}
  returns:
    instructions: Handle returns for order {{vars.order}}.
    handoffs:
      - to: back
tests:
  - name: hand over
    tool_results: {lookup: {status: sent}}
    steps:
      - user: I want a refund
        expect: {handoff: returns, agent: returns, tool_calls: [{name: lookup}]}
"""


def edit(old: str, new: str, text: str = BASE) -> str:
    assert text.count(old) == 1, old
    return text.replace(old, new)


def found(text: str) -> list[str]:
    return [str(p) for p in validate_text(text, "wf.yaml")]


def test_the_base_workflow_is_valid() -> None:
    assert found(BASE) == []
    assert load_workflow_text(BASE).start == "desk"


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_every_example_has_no_problem_at_all(path: Path) -> None:
    assert [str(p) for p in validate_file(path)] == []


# -- YAML --------------------------------------------------------------------------------------


def test_yaml_syntax_error() -> None:
    assert found(edit("slug: shop\n", "slug: shop: more\n")) == [
        "wf.yaml:2:11: YAML: mapping values are not allowed here"
    ]


def test_every_duplicate_key_is_reported_and_the_rest_is_still_checked() -> None:
    text = edit("slug: shop\n", "slug: shop\nslug: again\n")
    text = edit("    instructions: Help", "    greeting: a\n    greeting: b\n    instructions: Help", text)
    text = edit("start: desk", "start: dsk", text)
    assert found(text) == [
        "wf.yaml:3:1: YAML: duplicate key 'slug' (first defined on line 2)",
        "wf.yaml:4:8: start agent 'dsk' is not defined (agents: desk, returns) (did you mean 'desk'?)",
        "wf.yaml:23:5: YAML: duplicate key 'greeting' (first defined on line 22)",
    ]


def test_a_scalar_its_tag_cannot_read_is_reported_at_the_scalar() -> None:
    text = BASE + "defaults:\n  max_duration_seconds: !!int ten\n"
    assert found(text) == ["wf.yaml:41:25: YAML: 'ten' is not a valid int"]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("!!int", "'' is not a valid int"),  # ruamel raises a bare IndexError
        ("!!set", "'' is not a valid set"),  # ... and AttributeError
        ("!!bool maybe", "'maybe' is not a valid bool"),  # ... and KeyError
        ("2001-02-30", "'2001-02-30' is not a valid timestamp"),  # ... and ValueError
    ],
)
def test_scalars_ruamel_fails_on_without_a_position(value: str, message: str) -> None:
    assert found(f"a: 1\nb: {value}\n") == [f"wf.yaml:2:4: YAML: {message}"]


# -- structure (pydantic) ----------------------------------------------------------------------


def test_unknown_key_with_did_you_mean_at_the_key() -> None:
    text = edit("    instructions: Help", "    greting: hi\n    instructions: Help")
    assert found(text) == ["wf.yaml:21:5: agents.desk.greting: unknown key (did you mean 'greeting'?)"]


def test_unknown_key_with_nothing_close() -> None:
    assert found(BASE + "colour: blue\n") == ["wf.yaml:40:1: colour: unknown key"]


def test_unknown_key_inside_a_union_member() -> None:
    text = edit("      - to: returns\n", "      - to: returns\n        context: {last_n: 2, lastn: 3}\n")
    assert found(text) == [
        "wf.yaml:25:30: agents.desk.handoffs.0.context.lastn: unknown key (did you mean 'last_n'?)"
    ]


def test_wrong_type_at_the_value() -> None:
    text = edit("tools: [lookup, end_call]", "tools: [lookup, 5]")
    assert found(text) == ["wf.yaml:22:21: agents.desk.tools.1: Input should be a valid string"]


def test_a_value_that_fits_no_member_of_a_union_is_one_problem() -> None:
    text = edit("      - to: returns\n", "      - to: returns\n        context: everything\n")
    assert found(text) == [
        "wf.yaml:25:18: agents.desk.handoffs.0.context: Input should be 'full', 'summary' or 'none'"
        " or a valid dictionary or instance of LastN"
    ]


def test_missing_required_field_at_its_parent() -> None:
    text = edit("    description: Look up an order.\n", "")
    assert found(text) == ["wf.yaml:10:5: tools.lookup.description: required field is missing"]


def test_invalid_name_is_reported_at_the_key() -> None:
    text = edit("  name: {type: string}", "  name: {type: string}\n  9lives: {type: string}")
    (p,) = found(text)
    assert p.startswith("wf.yaml:6:3: variables.9lives: invalid name: String should match pattern")


# -- references --------------------------------------------------------------------------------


def test_start_must_name_an_agent() -> None:
    assert found(edit("start: desk", "start: nobody")) == [
        "wf.yaml:3:8: start agent 'nobody' is not defined (agents: desk, returns)"
    ]


def test_handoffs_must_name_an_agent_or_back() -> None:
    text = edit("      - to: returns\n", "      - to: retruns\n")
    text = edit("        handoff: returns\n", "        handoff: nobody\n", text)
    text = edit("agents:\n", "handoffs:\n  - to: humans\n  - to: back\nagents:\n", text)
    assert found(text) == [
        "wf.yaml:20:9: handoffs.0.to: no agent named 'humans' (agents: desk, returns)",
        "wf.yaml:27:13: agents.desk.handoffs.0.to: no agent named 'retruns' (did you mean 'returns'?)",
        "wf.yaml:30:18: agents.desk.rules.0.handoff: no agent named 'nobody' (agents: desk, returns)",
        "wf.yaml:33:3: warning: agents.returns: agent 'returns' is unreachable:"
        " no handoff leads to it from the start agent 'desk'",
    ]


def test_test_expectations_must_name_agents() -> None:
    text = edit("{handoff: returns, agent: returns,", "{handoff: back, agent: retuns,")
    assert found(text) == [
        "wf.yaml:39:27: tests.0.steps.0.expect.handoff: no agent named 'back'"
        " (a test names the agent the call is handed to, not 'back')",
        "wf.yaml:39:40: tests.0.steps.0.expect.agent: no agent named 'retuns' (did you mean 'returns'?)",
    ]


def test_tools_must_be_defined_or_built_in() -> None:
    text = edit("tools: [lookup, end_call]", "tools: [lookup, end_cal, fetch]")
    text = edit("tool: {name: lookup,", "tool: {name: lookp,", text)
    text = edit("tool_results: {lookup:", "tool_results: {lokup:", text)
    text = edit("tool_calls: [{name: lookup}]", "tool_calls: [{name: search}]", text)
    assert found(text) == [
        "wf.yaml:22:21: agents.desk.tools.1: no tool named 'end_cal' (did you mean 'end_call'?)",
        "wf.yaml:22:30: agents.desk.tools.2: no tool named 'fetch'"
        " (tools: lookup; built-in: end_call, transfer_call, set_variable)",
        "wf.yaml:29:22: agents.desk.rules.1.tool.name: no tool named 'lookp' (did you mean 'lookup'?)",
        "wf.yaml:36:20: tests.0.tool_results.lokup: no tool named 'lokup' (did you mean 'lookup'?)",
        "wf.yaml:39:72: tests.0.steps.0.expect.tool_calls.0.name: no tool named 'search'"
        " (tools: lookup; built-in: end_call, transfer_call, set_variable)",
    ]


def test_http_save_must_name_a_declared_var() -> None:
    text = edit("save: {order: status}", "save: {ordr: status}")
    assert found(text) == [
        "wf.yaml:18:14: tools.lookup.http.save.ordr: 'ordr' is not declared under 'vars' (did you mean 'order'?)"
    ]


def test_an_agent_cannot_be_called_back() -> None:
    text = edit("  returns:\n", "  back:\n    instructions: x\n  returns:\n")
    assert "wf.yaml:30:3: agents.back: 'back' cannot name an agent" in "\n".join(found(text))


# -- templates ---------------------------------------------------------------------------------


def test_templates_must_name_declared_variables() -> None:
    text = edit("Help {{user.name}}.", "Help {{user.nam}}, order {{ vars.ordr }}.")
    assert found(text) == [
        "wf.yaml:21:19: agents.desk.instructions: {{user.nam}}: 'nam' is not declared under 'variables'"
        " (did you mean 'name'?)",
        "wf.yaml:21:19: agents.desk.instructions: {{vars.ordr}}: 'ordr' is not declared under 'vars'"
        " (did you mean 'order'?)",
    ]


def test_malformed_and_unclosed_templates() -> None:
    text = edit("Help {{user.name}}.", "Help {{ user.name.upper }} {{name}} {{user.first-name}} {{user.name")
    assert found(text) == [
        "wf.yaml:21:19: agents.desk.instructions: malformed template '{{ user.name.upper }}':"
        " a template is exactly {{user.NAME}} or {{vars.NAME}}",
        "wf.yaml:21:19: agents.desk.instructions: malformed template '{{name}}':"
        " a template is exactly {{user.NAME}} or {{vars.NAME}}",
        "wf.yaml:21:19: agents.desk.instructions: malformed template '{{user.first-name}}':"
        " names in templates are letters, digits and '_'",
        "wf.yaml:21:19: agents.desk.instructions: unclosed template '{{user.name': a template ends with '}}'",
    ]


def test_args_only_in_http_and_only_declared_parameters() -> None:
    text = edit("{{args.order_id}}", "{{args.order}}")
    text = edit(
        "      save:",
        "      headers: {X-User: '{{user.nme}}'}\n      body: {q: [{id: '{{args.id}}'}]}\n      save:",
        text,
    )
    text = edit("      - to: back\n", "      - to: back\n        say: Back with {{args.order_id}}\n", text)
    assert found(text) == [
        "wf.yaml:17:12: tools.lookup.http.url: {{args.order}}: tool 'lookup' has no parameter 'order'"
        " (did you mean 'order_id'?)",
        "wf.yaml:18:25: tools.lookup.http.headers.X-User: {{user.nme}}: 'nme' is not declared under"
        " 'variables' (did you mean 'name'?)",
        "wf.yaml:19:23: tools.lookup.http.body.q.0.id: {{args.id}}: tool 'lookup' has no parameter 'id'",
        "wf.yaml:36:14: agents.returns.handoffs.0.say: {{args.order_id}}: tool arguments can only be used"
        " in a tool's http url, headers and body",
    ]


def test_templates_in_greeting_fallback_rule_say_and_filler() -> None:
    text = edit(
        "    description: Look up an order.\n", "    description: Look up an order.\n    filler: '{{x}}'\n"
    )
    text = edit(
        "    instructions: Help", "    greeting: '{{x}}'\n    fallback: '{{x}}'\n    instructions: Help", text
    )
    text = edit("        handoff: returns\n", "        handoff: returns\n        say: '{{x}}'\n", text)
    assert [p.split(": ")[0:2] for p in found(text)] == [
        ["wf.yaml:11:13", "tools.lookup.filler"],
        ["wf.yaml:22:15", "agents.desk.greeting"],
        ["wf.yaml:23:15", "agents.desk.fallback"],
        ["wf.yaml:31:14", "agents.desk.rules.0.say"],
    ]


# -- tool schemas and python tools -------------------------------------------------------------


def test_parameters_must_be_a_valid_json_schema_of_type_object() -> None:
    text = edit("order_id: {type: string}", "order_id: {type: strin}")
    text = edit("required: [order_id]", "required: order_id", text)
    assert found(text) == [
        "wf.yaml:14:26: tools.lookup.parameters.properties.order_id.type: not a valid JSON Schema:"
        " 'strin' is not valid under any of the given schemas",
        "wf.yaml:15:17: tools.lookup.parameters.required: not a valid JSON Schema:"
        " 'order_id' is not of type 'array'",
    ]
    text = edit("      type: object\n", "      type: array\n")
    assert found(text) == [
        "wf.yaml:12:7: tools.lookup.parameters: must be a JSON Schema of type 'object'"
        " (arguments are passed by name)"
    ]


def test_arguments_are_checked_against_the_parameters() -> None:
    text = edit("arguments: {order_id: A1}", "arguments: {order_id: 7}")
    text = edit(
        "tool_calls: [{name: lookup}]", "tool_calls: [{name: lookup, arguments: {order_id: [1]}}]", text
    )
    assert found(text) == [
        "wf.yaml:29:52: agents.desk.rules.1.tool.arguments.order_id: does not fit the parameters"
        " of tool 'lookup': 7 is not of type 'string'",
        "wf.yaml:39:102: tests.0.steps.0.expect.tool_calls.0.arguments.order_id: does not fit the"
        " parameters of tool 'lookup': [1] is not of type 'string'",
    ]
    # a rule's call is made as written, so it must be complete; a test lists only what it checks
    text = edit("arguments: {order_id: A1}", "arguments: {}")
    assert found(text) == [
        "wf.yaml:29:41: agents.desk.rules.1.tool.arguments: does not fit the parameters of tool"
        " 'lookup': 'order_id' is a required property"
    ]


def python_tool(target: str) -> str:
    return edit("agents:\n", f"  compute:\n    description: Compute.\n    python: '{target}'\nagents:\n")


def test_python_tools_must_import_and_be_callable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"vr_tools_{uuid.uuid4().hex}"
    (tmp_path / f"{name}.py").write_text("def run(x: int) -> int:\n    return x\n\nCONSTANT = 3\n")
    broken = f"vr_broken_{uuid.uuid4().hex}"
    (tmp_path / f"{broken}.py").write_text("raise RuntimeError('no database configured')\n")
    leaving = f"vr_exit_{uuid.uuid4().hex}"
    (tmp_path / f"{leaving}.py").write_text("import sys\nsys.exit(3)\n")

    def check(target: str) -> list[str]:
        wf = tmp_path / "wf.yaml"
        wf.write_text(python_tool(target))
        return [str(p).removeprefix(f"{wf}:") for p in validate_file(wf)]

    # Only sys.path counts, as at run time: a module next to the workflow is not enough.
    assert check(f"{name}:run")[0].startswith(f"21:13: tools.compute.python: cannot import '{name}'")
    assert "set PYTHONPATH" in check(f"{name}:run")[0]
    assert check("json:dumps") == []
    monkeypatch.syspath_prepend(str(tmp_path))  # what PYTHONPATH=... does
    assert check(f"{name}:run") == []
    assert check("vr_no_such_module:run") == [
        "21:13: tools.compute.python: cannot import 'vr_no_such_module':"
        " ModuleNotFoundError: No module named 'vr_no_such_module'"
        " (python tools import from sys.path: install the package or set PYTHONPATH)"
    ]
    assert check(f"{name}:walk") == [f"21:13: tools.compute.python: module '{name}' has no attribute 'walk'"]
    assert check(f"{name}:CONSTANT") == [f"21:13: tools.compute.python: '{name}:CONSTANT' is not callable"]
    assert check(f"{broken}:run") == [
        f"21:13: tools.compute.python: cannot import '{broken}': RuntimeError: no database configured"
    ]
    assert check(f"{leaving}:run") == [
        f"21:13: tools.compute.python: cannot import '{leaving}': SystemExit: 3"
    ]


# -- warnings, several problems, loading -------------------------------------------------------


def test_unreachable_agent_is_a_warning_at_its_name() -> None:
    text = edit("      - to: returns\n", "      - to: back\n")
    text = edit("        handoff: returns\n", "        say: ok\n", text)
    (p,) = validate_text(text, "wf.yaml")
    assert p.severity == "warning"
    assert str(p) == (
        "wf.yaml:30:3: warning: agents.returns: agent 'returns' is unreachable:"
        " no handoff leads to it from the start agent 'desk'"
    )
    assert load_workflow_text(text).start == "desk"  # warnings do not stop a workflow loading


def test_a_global_handoff_makes_its_target_reachable() -> None:
    text = edit("      - to: returns\n", "      - to: back\n")
    text = edit("        handoff: returns\n", "        say: ok\n", text)
    text = edit("agents:\n", "handoffs:\n  - to: returns\nagents:\n", text)
    assert found(text) == []


def test_every_problem_of_every_kind_is_reported_in_file_order() -> None:
    text = edit("slug: shop", "slug: Shop")
    text = edit("start: desk", "start: front", text)
    text = edit("Help {{user.name}}.", "Help {{user.who}}.", text)
    text = edit("tools: [lookup, end_call]", "tools: lookup", text)
    text = edit("      - to: back\n", "      - to: nowhere\n", text)
    text = edit("    instructions: Handle", "    greting: hi\n    instructions: Handle", text)
    problems = found(text)
    assert [p.split(": ")[0] for p in problems] == [
        "wf.yaml:2:7", "wf.yaml:3:8", "wf.yaml:21:19", "wf.yaml:22:12", "wf.yaml:31:5", "wf.yaml:34:13",
    ]  # fmt: skip
    with pytest.raises(WorkflowError) as err:
        load_workflow_text(text, "wf.yaml")
    assert [str(p) for p in err.value.problems] == problems
    assert str(err.value).endswith("(and 5 more)")


def test_problem_text_for_files_and_warnings() -> None:
    assert str(Problem("a.yaml", 0, 0, "no such file")) == "a.yaml: no such file"
    assert str(Problem("a.yaml", 3, 4, "odd", "warning")) == "a.yaml:3:4: warning: odd"


def test_validate_file_reports_unreadable_files(tmp_path: Path) -> None:
    assert [str(p) for p in validate_file(tmp_path / "nope.yaml")] == [
        f"{tmp_path / 'nope.yaml'}: no such file"
    ]
    (tmp_path / "bin.yaml").write_bytes(b"\xff\xfe\x00")
    (p,) = validate_file(tmp_path / "bin.yaml")
    assert p.message.startswith("cannot read:")


def test_a_fifo_is_refused_instead_of_waiting_for_a_writer(tmp_path: Path) -> None:
    import os

    os.mkfifo(tmp_path / "pipe.yaml")
    assert [str(p) for p in validate_file(tmp_path / "pipe.yaml")] == [
        f"{tmp_path / 'pipe.yaml'}: not a regular file"
    ]


# -- the CLI -----------------------------------------------------------------------------------


def voicerun(*args: str | Path, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)},
    )


def test_cli_validate_exit_codes_and_output(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(BASE)
    warned = tmp_path / "warned.yaml"
    warned.write_text(
        edit("        handoff: returns\n", "        say: ok\n", edit("- to: returns\n", "- to: back\n"))
    )
    bad = tmp_path / "bad.yaml"
    bad.write_text(edit("start: desk", "start: nobody", edit("tools: [lookup, end_call]", "tools: [lokup]")))

    proc = voicerun("validate", good, cwd=tmp_path)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "", "1 file checked: 0 errors, 0 warnings\n")

    proc = voicerun("validate", "good.yaml", "warned.yaml", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        "warned.yaml:30:3: warning: agents.returns: agent 'returns' is unreachable:"
        " no handoff leads to it from the start agent 'desk'"
    ]
    assert proc.stderr == "2 files checked: 0 errors, 1 warning\n"

    proc = voicerun("validate", "bad.yaml", "good.yaml", "missing.yaml", cwd=tmp_path)
    assert proc.returncode == 1
    assert proc.stdout.splitlines() == [
        "bad.yaml:3:8: start agent 'nobody' is not defined (agents: desk, returns)",
        "bad.yaml:22:13: agents.desk.tools.0: no tool named 'lokup' (did you mean 'lookup'?)",
        "missing.yaml: no such file",
    ]
    assert proc.stderr == "3 files checked: 3 errors, 0 warnings\n"

    proc = voicerun("validate", ".", cwd=tmp_path)  # a directory: its .yaml files
    assert proc.returncode == 1 and proc.stderr == "3 files checked: 2 errors, 1 warning\n"


def test_cli_validate_without_paths_is_a_usage_error() -> None:
    proc = voicerun("validate")
    assert proc.returncode == 2 and "PATH" in proc.stderr and "Traceback" not in proc.stderr


def test_cli_schema_is_a_json_schema_that_accepts_the_examples() -> None:
    proc = voicerun("schema")
    assert proc.returncode == 0, proc.stderr
    schema = json.loads(proc.stdout)
    assert schema == json.loads(json.dumps(workflow_json_schema()))
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    Draft202012Validator.check_schema(schema)
    validator = Draft202012Validator(schema)
    for path in sorted(EXAMPLES.glob("*.yaml")):
        data = YAML(typ="safe").load(path.read_text())
        assert list(validator.iter_errors(data)) == [], path.name
    front_desk = YAML(typ="safe").load((EXAMPLES / "front-desk.yaml").read_text())
    front_desk["agents"]["receptionist"]["greting"] = "hi"
    assert not validator.is_valid(front_desk)


# -- http tools: where templates may go --------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "https://{{user.name}}/orders",
        "https://shop.example{{user.name}}/orders",
        "https://shop.example:{{user.name}}/orders",
        "https://{{user.name}}@shop.example/orders",
        "{{user.name}}/orders",
    ],
)
def test_a_template_in_a_urls_origin_is_reported_at_the_url(url: str) -> None:
    text = edit('"https://shop.example/orders/{{args.order_id}}"', f'"{url}"')
    assert found(text) == [
        "wf.yaml:17:12: tools.lookup.http.url: a template cannot fill the scheme, user, host or port of "
        "a URL: write them out (templates fill the path, query and fragment, percent-encoded)"
    ]
    with pytest.raises(WorkflowError, match="a template cannot fill"):
        load_workflow_text(text, "wf.yaml")


def test_a_text_body_with_templates_needs_a_form_or_plain_text_type() -> None:
    json_text = edit("      save: {order: status}\n", '      body: \'{"id": "{{args.order_id}}"}\'\n')
    assert found(json_text) == [
        "wf.yaml:18:13: tools.lookup.http.body: a text body takes templates only with a Content-Type "
        "header of application/x-www-form-urlencoded (values are form-encoded) or text/plain; write a "
        "JSON body as a mapping or list (values are sent as JSON values)"
    ]
    form = edit(
        "      save: {order: status}\n",
        "      headers: {content-type: application/x-www-form-urlencoded}\n      body: 'id={{args.order_id}}'\n",
    )
    assert found(form) == []


# -- providers: what a call would refuse at start ----------------------------------------------

RULES_ONLY = "llm fallback 'rules'/'local' is not supported: the agent's rules already run before any LLM"


@pytest.mark.parametrize(
    ("stage", "spec", "col", "message"),
    [
        ("llm", "[openai, rules]", 17, f"defaults.llm.fallback.0.provider: {RULES_ONLY}"),
        ("llm", "[openai, local]", 17, f"defaults.llm.fallback.0.provider: {RULES_ONLY}"),
        (
            "llm",
            "{provider: openai, fallback: [rules]}",
            38,
            f"defaults.llm.fallback.0.provider: {RULES_ONLY}",
        ),
        ("llm", "[rules, openai]", 8, "defaults.llm: llm 'rules' takes no fallback: it cannot fail"),
        (
            "llm",
            "{provider: rules, options: {temperature: 0}}",
            8,
            "defaults.llm: llm provider 'rules': takes no model or options: it answers with the agent's "
            "rules and fallback",
        ),
        (
            "llm",
            "[openai, {provider: openai, options: {temprature: 0}}]",
            17,
            "defaults.llm.fallback.0: llm provider 'openai': openai llm: unknown option(s) 'temprature' "
            "(known: api_key, base_url, max_tokens, retry, temperature, timeouts; the model is set by the "
            "provider's `model`)",
        ),
        (
            "tts",
            "{provider: hibari, model: bella}",
            8,
            "defaults.tts: tts provider 'hibari': hibari voice 'bella' is not available offline; only "
            "'heart' ships in the hibari-tts package",
        ),
        (
            "tts",
            "{provider: hibari, options: {speed: 3}}",
            8,
            "defaults.tts: tts provider 'hibari': hibari speed must be 0.5-2.0, got 3",
        ),
        (
            "tts",
            "[polly, {provider: polly, options: {voise: Joanna}}]",
            16,
            "defaults.tts.fallback.0: tts provider 'polly': polly: unknown option(s) 'voise' (known: "
            "endpoint_url, engine, language_code, region, retry, ssml, timeouts, voice; the model is set "
            "by the provider's `model`)",
        ),
        (
            "stt",
            "{provider: whisper, model: small}",
            8,
            "defaults.stt: stt provider 'whisper': model 'small': whisper runs the tiny.en model inside "
            "the package; options.model_dir names another CTranslate2 Whisper model",
        ),
        (
            "stt",
            "{provider: whisper, options: {beam: 2}}",
            8,
            "defaults.stt: stt provider 'whisper': unknown option(s) 'beam' (known: beam_size, "
            "cpu_threads, interim_interval_s, language, model_dir, speculate_after_ms)",
        ),
        (
            "stt",
            "{provider: whisper, options: {beam_size: five}}",
            8,
            "defaults.stt: stt provider 'whisper': option 'beam_size' must be an integer, got 'five'",
        ),
        (
            "stt",
            "[deepgram, {provider: deepgram, options: {endpointing: 300}}]",
            19,
            "defaults.stt.fallback.0: stt provider 'deepgram': deepgram stt: unknown option(s) "
            "'endpointing' (known: api_key, base_url, endpointing_ms, keepalive_s, keyterms, keywords, "
            "language, max_utterance_s, punctuate, retry, send_queue_frames, smart_format, timeouts; the model is set by the "
            "provider's `model`)",
        ),
    ],
)
def test_a_provider_a_call_would_refuse_is_refused_at_its_node(
    stage: str, spec: str, col: int, message: str
) -> None:
    text = BASE + f"defaults:\n  {stage}: {spec}\n"
    assert found(text) == [f"wf.yaml:41:{col}: {message}"]


def test_providers_a_call_starts_are_valid() -> None:
    text = BASE + (
        "defaults:\n"
        "  stt: [{provider: deepgram, model: nova-3, options: {endpointing_ms: 300}}, local]\n"
        "  llm: [{provider: openai, model: gpt-4o-mini, options: {temperature: 0.2}}, openai]\n"
        "  tts: [polly, {provider: openai, options: {voice: alloy}}, {provider: hibari, options: {speed: 1}}]\n"
    )
    assert found(text) == []
