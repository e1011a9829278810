"""The validator never crashes: any text, any structure, any mutation of a workflow gives either a
Workflow or WorkflowError from the loader, and a list of positioned problems from validate_text."""

from __future__ import annotations

import copy
import io
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from ruamel.yaml import YAML

from workflows import Workflow, WorkflowError, load_workflow_text, validate_text

FUZZ = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Pieces of YAML and of the workflow language, so random text reaches past the YAML parser.
TOKENS = [
    "version: 1\n", "slug: s\n", "start: a\n", "agents:\n", "  a:\n", "    instructions: x\n",
    "tools:\n", "  t:\n", "    python: 'json:dumps'\n", "    parameters: {type: object}\n",
    "handoffs:\n", "  - to: a\n", "- ", ": ", "? ", "[", "]", "{", "}", ",", "\n", "  ", "\t", "#",
    "&x ", "*x", "<<: *x\n", "!!int ", "!!bool ", "!!float ", "!!timestamp ", "!!set ", "!tag ",
    "'", '"', "|\n", ">-\n", "---\n", "...\n", "%YAML 1.2\n", "2001-02-30", "0x1F", ".inf", "~",
    "{{user.x}}", "{{args.y}}", "{{", "}}", "\\u0000", "\ufeff", "é",
]  # fmt: skip
yamlish = st.lists(st.sampled_from(TOKENS) | st.text(max_size=5), max_size=40).map("".join)

scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text(max_size=12)
    | st.sampled_from(
        ["a", "back", "end_call", "{{user.x}}", "{{vars.y}}", "{{args.z}}", "{{ x", "(", "json:dumps"]
    )
)
keys = st.text(max_size=8) | st.sampled_from(
    ["version", "slug", "start", "agents", "tools", "handoffs", "to", "instructions", "rules", "tests",
     "parameters", "http", "url", "python", "steps", "expect", "context", "last_n", "variables", "vars"]
)  # fmt: skip
structures = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=4),
    max_leaves=25,
)

BASE: dict[str, Any] = {
    "version": 1,
    "slug": "shop",
    "start": "desk",
    "variables": {"name": {"type": "string"}},
    "vars": {"order": {"type": "enum", "values": ["a", "b"]}},
    "tools": {
        "lookup": {
            "description": "Look up an order.",
            "parameters": {"type": "object", "properties": {"id": {"type": "string"}}, "required": ["id"]},
            "http": {"url": "https://x.example/{{args.id}}", "body": {"q": ["{{user.name}}"]}, "save": {"order": "s"}},
            "filler": "One moment.",
        },
        "dump": {"description": "Dump.", "python": "json:dumps"},
    },
    "handoffs": [{"to": "desk", "say": "Back to {{user.name}}."}],
    "agents": {
        "desk": {
            "instructions": "Help {{user.name}}.",
            "tools": ["lookup", "end_call"],
            "handoffs": [{"to": "returns", "context": {"last_n": 2}}],
            "rules": [
                {"keywords": ["refund"], "handoff": "returns"},
                {"match": "order", "tool": {"name": "lookup", "arguments": {"id": "A1"}}},
            ],
        },
        "returns": {"instructions": "Order {{vars.order}}.", "handoffs": [{"to": "back"}]},
    },
    "tests": [
        {
            "name": "t",
            "tool_results": {"lookup": {"s": "a"}},
            "steps": [{"user": "refund", "expect": {"agent": "returns", "tool_calls": [{"name": "lookup"}]}}],
        }
    ],
}  # fmt: skip


def dump(data: object) -> str:
    out = io.StringIO()
    YAML(typ="safe").dump(data, out)
    return out.getvalue()


def check(text: str) -> None:
    problems = validate_text(text, "wf.yaml")
    for p in problems:
        assert p.line >= 0 and p.col >= 0 and p.message and p.severity in ("error", "warning")
    try:
        workflow = load_workflow_text(text, "wf.yaml")
    except WorkflowError as exc:
        assert exc.problems == tuple(p for p in problems if p.severity == "error")
    else:
        assert isinstance(workflow, Workflow)
        assert all(p.severity == "warning" for p in problems)


def paths(node: object, at: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [at]
    if isinstance(node, dict):
        for k, v in node.items():
            found += paths(v, (*at, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            found += paths(v, (*at, i))
    return found


def test_the_fuzz_base_is_a_valid_workflow() -> None:
    assert validate_text(dump(BASE)) == []


@FUZZ
@given(st.text(max_size=200) | yamlish)
@example("!!int")  # found by this test: ruamel raised IndexError
@example("!!set")  # and AttributeError
@example("a: &a [*a]\nb: *a\n" + "[" * 3000)
def test_any_text(text: str) -> None:
    check(text)


@FUZZ
@given(structures)
def test_any_structure(data: object) -> None:
    check(dump(data))


@settings(FUZZ, max_examples=150)
@given(st.data())
def test_any_mutation_of_a_workflow(data: st.DataObject) -> None:
    wf = copy.deepcopy(BASE)
    for _ in range(data.draw(st.integers(1, 4), label="mutations")):
        path = data.draw(st.sampled_from(paths(wf)[1:]), label="path")
        parent = wf
        for part in path[:-1]:
            parent = parent[part]
        last = path[-1]
        action = data.draw(st.sampled_from(["replace", "delete", "add", "rename"]), label="action")
        if action == "replace":
            parent[last] = data.draw(structures, label="value")
        elif action == "delete":
            del parent[last]
        elif action == "add" and isinstance(parent, dict):
            parent[data.draw(keys, label="key")] = data.draw(structures, label="value")
        elif action == "rename" and isinstance(parent, dict):
            parent[data.draw(keys, label="key")] = parent.pop(last)
        if not paths(wf)[1:]:
            break
    check(dump(wf))
