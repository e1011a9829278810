"""Workflow files past the documented limits (docs/workflows.md#limits) are refused at the line and
column where they cross the limit, before the work that would make a check slow or hang."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from workflows import LIMITS, WorkflowError, load_workflow, load_workflow_text, validate_file, validate_text

DOCS = Path(__file__).resolve().parents[2] / "docs" / "workflows.md"

HEAD = "version: 1\nslug: big\nstart: a0\n"


def found(text: str) -> list[str]:
    return [str(p) for p in validate_text(text, "wf.yaml")]


def agents(n: int, body: str = "{instructions: A.}") -> str:
    return "agents:\n" + "".join(f"  a{i}: {body}\n" for i in range(n))


LAUGHS = HEAD + (
    "tools:\n"
    "  t:\n"
    "    description: T.\n"
    "    http:\n"
    "      url: http://127.0.0.1:1/x\n"
    "      method: POST\n"
    "      body:\n"
    '        a: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]\n'
    + "".join(f"        {chr(98 + i)}: &l{i + 1} [{', '.join([f'*l{i}'] * 9)}]\n" for i in range(8))
    + agents(1, "{instructions: A., tools: [t]}")
)


def test_an_alias_bomb_in_a_tool_body_is_refused_at_the_alias() -> None:
    # 9^9 "lol"s once expanded: the count stops at the alias that crosses the limit, in
    # milliseconds, instead of the tool expanding it during a call
    assert found(LAUGHS) == [
        f"wf.yaml:15:22: YAML: alias *l3 expands to 7381 nodes, making the document larger than the "
        f"limit of {LIMITS.nodes} (mappings, lists and values)"
    ]
    with pytest.raises(WorkflowError, match=r"wf\.yaml:15:22: YAML: alias"):
        load_workflow_text(LAUGHS, "wf.yaml")


def test_an_alias_inside_the_node_it_names_is_refused() -> None:
    assert found("a: &a [1, *a]\n") == ["wf.yaml:1:11: YAML: alias *a refers to a node that contains it"]


def test_aliases_within_the_limit_still_work() -> None:
    text = HEAD + "name: &instr Help the caller.\n" + agents(1, "{instructions: *instr, greeting: *instr}")
    assert found(text) == []


def test_nesting_is_bounded_also_through_an_alias() -> None:
    deep = "a:\n" + "".join("  " * (i + 1) + f"k{i}:\n" for i in range(LIMITS.depth)) + "  " * 65 + "x\n"
    (problem,) = found(deep)
    assert (
        problem
        == f"wf.yaml:{LIMITS.depth}:{2 * LIMITS.depth - 1}: YAML: nested more than 64 levels deep (the limit)"
    )
    # 40 levels, named twice at 30 levels deep: each alone fits, together they do not
    inner = "&d " + "{k: " * 40 + "x" + "}" * 40
    outer = "b: " + "[" * 30 + "*d" + "]" * 30
    assert found(f"a: {inner}\n{outer}\n") == [
        "wf.yaml:2:34: YAML: alias *d nests more than 64 levels deep (the limit)"
    ]


def test_brackets_nested_too_deep_are_refused_before_parsing() -> None:
    # ruamel's scanner takes seconds over a few thousand open brackets
    assert found("slug: " + "[" * 5000) == [
        f"wf.yaml:1:71: YAML: more than {LIMITS.depth} '[' or '{{' open at once"
    ]


def test_a_string_over_the_limit_is_refused_at_the_string() -> None:
    text = HEAD + agents(1, "{instructions: " + "x" * (LIMITS.string_chars + 1) + "}")
    assert found(text) == [
        f"wf.yaml:5:22: YAML: a string of {LIMITS.string_chars + 1} characters, over the limit of "
        f"{LIMITS.string_chars}"
    ]


def test_a_file_over_the_size_limit_is_refused_where_it_crosses_it(tmp_path: Path) -> None:
    # 5 MB: read no further than the limit, and refused at the line and column where it is crossed
    path = tmp_path / "big.yaml"
    line = "# " + "x" * 97 + "\n"  # 100 bytes
    path.write_text(line * 50_000)
    (problem,) = validate_file(path)
    assert str(problem) == f"{path}:10486:77: the file is over the limit of {LIMITS.file_bytes} bytes"
    with pytest.raises(WorkflowError, match="over the limit"):
        load_workflow(path)


def test_many_small_nodes_are_refused_where_the_count_crosses_the_limit() -> None:
    text = "a: [" + "1, " * LIMITS.nodes + "]\n"
    assert found(text) == [
        f"wf.yaml:1:{3 * (LIMITS.nodes - 3) + 5}: YAML: the document has more nodes than the limit of "
        f"{LIMITS.nodes} (mappings, lists and values)"
    ]


@pytest.mark.parametrize(
    ("what", "text", "line", "col"),
    [
        ("agents", HEAD + agents(LIMITS.agents + 1), 5 + LIMITS.agents, 3),
        (
            "tools",
            HEAD
            + "tools:\n"
            + "".join(f"  t{i}: {{description: T., python: 'json:dumps'}}\n" for i in range(LIMITS.tools + 1))
            + agents(1),
            5 + LIMITS.tools,
            3,
        ),
        (
            "rules",
            HEAD
            + "agents:\n  a0:\n    instructions: A.\n    rules:\n"
            + "      - {keywords: [w], say: s}\n" * 1000
            + "  a1:\n    instructions: A.\n    rules:\n"
            + "      - {keywords: [w], say: s}\n" * (LIMITS.rules - 999),
            11 + LIMITS.rules,
            9,
        ),
        (
            "tests",
            HEAD + agents(1) + "tests:\n" + "  - {name: t, steps: [{user: hi}]}\n" * (LIMITS.tests + 1),
            7 + LIMITS.tests,
            5,
        ),
    ],
)
def test_counts_over_their_limit_are_refused_at_the_first_one_too_many(
    what: str, text: str, line: int, col: int
) -> None:
    limit = getattr(LIMITS, what)
    assert found(text) == [f"wf.yaml:{line}:{col}: more than {limit} {what} (the limit)"]


def test_a_file_at_the_limits_is_valid() -> None:
    text = (
        "version: 1\nslug: big\nstart: a0\ntools:\n"
        + "".join(f"  t{i}: {{description: T., python: 'json:dumps'}}\n" for i in range(LIMITS.tools))
        + "agents:\n"
        + "".join(
            f"  a{i}:\n    instructions: A.\n    handoffs: [{{to: a0}}]\n    rules:\n"
            + "      - {keywords: [w], say: s}\n" * (LIMITS.rules // LIMITS.agents)
            for i in range(LIMITS.agents)
        )
        + "tests:\n"
        + "  - {name: t, steps: [{user: hi}]}\n" * LIMITS.tests
    )
    assert len(text) < LIMITS.file_bytes
    assert load_workflow_text(text).tests[-1].name == "t"


def test_the_documented_limits_are_the_enforced_ones() -> None:
    docs = DOCS.read_text()
    section = docs[docs.index("## Limits") :]
    for name in ("file_bytes", "nodes", "depth", "string_chars", "agents", "rules", "tools", "tests"):
        value = f"{getattr(LIMITS, name):,}"
        assert re.search(rf"\|\s*{re.escape(value)}\s*\|", section), (name, value)
