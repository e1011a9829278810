"""Checks that need the whole workflow file: references, templates, tool schemas and imports.

They read the YAML tree, not the validated models, so they also run when the models do not
validate (a file with a type error and a dangling handoff gets both reported in one pass), and
every problem is positioned at its node. Everything here is defensive about shapes: a value of
the wrong type is pydantic's to report, and a check that meets one skips it.
"""

from __future__ import annotations

import difflib
import importlib
import re
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from jsonschema import Draft202012Validator
from referencing.exceptions import Unresolvable
from ruamel.yaml.comments import CommentedMap, CommentedSeq

from ._limits import LIMITS
from ._model import BACK, BUILTIN_TOOLS, TEXT_BODY_MEDIA, TEXT_BODY_TEMPLATES, Workflow, media_type

Severity = Literal["error", "warning"]
Loc = tuple[str | int, ...]

SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"

# Names in templates are identifiers (see _template.PLACEHOLDER); anything else between braces
# would be left in the text as it is, so it is reported rather than guessed at.
_REFERENCE = re.compile(r"\s*(user|vars|args)\.([A-Za-z_][A-Za-z0-9_]*)\s*")
_DASHED_REFERENCE = re.compile(r"\s*(user|vars|args)\.[A-Za-z0-9_-]+\s*")
_PYTHON_TARGET = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
_DEFAULT_PARAMETERS: dict[str, object] = {"type": "object", "properties": {}}

# Bounds for walking user data (http bodies, schemas, arguments): a file is refused past these
# while it is parsed, aliases expanded; a tree built in code is walked no further either.
_MAX_DEPTH = LIMITS.depth
_MAX_NODES = LIMITS.nodes


@dataclass(frozen=True, slots=True)
class Problem:
    """One finding in a workflow file; line and col are 1-based, 0 when it is about the file."""

    path: str
    line: int
    col: int
    message: str
    severity: Severity = "error"

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}:{self.col}" if self.line > 0 else self.path
        tag = "warning: " if self.severity == "warning" else ""
        return f"{where}: {tag}{self.message}"


def dotted(loc: Sequence[object]) -> str:
    return ".".join(str(p) for p in loc)


def did_you_mean(word: object, choices: Collection[str]) -> str:
    """` (did you mean 'x'?)` when a choice is close to word, else an empty string."""
    if not isinstance(word, str):
        return ""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def position(root: Any, loc: Sequence[object], *, at_key: bool = False) -> tuple[int, int]:
    """1-based line and column of the node at loc (of its key, if at_key) in a ruamel tree.

    When loc runs off the tree (a missing key, a union member's name), the deepest node that
    exists is used: that is where the author has to look.
    """
    line, col = 0, 0
    node = root
    shift = 0
    for i, part in enumerate(loc):
        last = i == len(loc) - 1
        try:
            if isinstance(node, CommentedSeq) and part == "fallback":
                # `tts: [polly, openai]`: a provider list; its fallback N is item N + 1
                shift = 1
                continue
            if isinstance(part, int):
                part, shift = part + shift, 0
            if isinstance(node, CommentedMap) and part in node:
                kline, kcol = node.lc.key(part)
                vline, vcol = node.lc.value(part)
                use_key = (at_key and last) or vline is None
                line, col = (kline, kcol) if use_key else (vline, vcol)
                node = node[part]
            elif isinstance(node, CommentedSeq) and isinstance(part, int) and 0 <= part < len(node):
                line, col = node.lc.item(part)
                node = node[part]
            else:
                break
        except (KeyError, TypeError):
            # merged keys (`<<: *base`) and unhashable parts have no recorded position
            break
    return line + 1, col + 1


def workflow_json_schema() -> dict[str, object]:
    """The workflow language as a JSON Schema (2020-12), for editors to complete and check."""
    generated = Workflow.model_json_schema()
    generated.pop("title", None)
    return {
        "$schema": SCHEMA_DIALECT,
        "title": "voicerun workflow",
        "description": "A voicerun workflow file, language version 1 (see docs/workflows.md).",
        **generated,
    }


def check_tree(root: Mapping[Any, Any], path: str, *, base_dir: Path | None = None) -> list[Problem]:
    """Every semantic problem in a parsed workflow file (errors and warnings), in file order.

    base_dir is the workflow file's directory (kept for messages; python tools are imported from
    sys.path only, as the runtime imports them).
    """
    checker = _Checker(root, path, base_dir)
    checker.run()
    return checker.problems


# -- shapes ------------------------------------------------------------------------------------


def _entries(value: object) -> list[tuple[str, Any]]:
    if not isinstance(value, Mapping):
        return []
    return [(k, v) for k, v in value.items() if isinstance(k, str)]


def _items(value: object) -> list[tuple[int, Any]]:
    if not isinstance(value, list | tuple):
        return []
    return list(enumerate(value))


class _TooBig(Exception):
    """User data deeper or larger than the checks walk."""


def _plain(value: object) -> object:
    """value as plain JSON-like data (dict, list, scalars), bounded in depth and size."""
    count = 0

    def copy(v: object, depth: int) -> object:
        nonlocal count
        count += 1
        if depth > _MAX_DEPTH or count > _MAX_NODES:
            raise _TooBig
        if isinstance(v, Mapping):
            return {str(k): copy(x, depth + 1) for k, x in v.items()}
        if isinstance(v, list | tuple):
            return [copy(x, depth + 1) for x in v]
        if isinstance(v, bool | None):
            return v
        if isinstance(v, int):
            return int(v)
        if isinstance(v, float):
            return float(v)
        return str(v)

    return copy(value, 0)


def _strings(value: object, loc: Loc) -> Iterator[tuple[Loc, str]]:
    """Every string value at any depth (mapping values and list items), with its location."""
    stack: list[tuple[object, Loc]] = [(value, loc)]
    seen = 0
    while stack and seen < _MAX_NODES:
        v, at = stack.pop()
        seen += 1
        if isinstance(v, str):
            yield at, v
        elif len(at) - len(loc) < _MAX_DEPTH:
            if isinstance(v, Mapping):
                stack.extend((x, (*at, k)) for k, x in reversed(list(v.items())) if isinstance(k, str))
            elif isinstance(v, list | tuple):
                stack.extend((x, (*at, i)) for i, x in reversed(list(enumerate(v))))


def _short(text: str, limit: int = 160) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


# -- the checks --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Args:
    """What `{{args.x}}` may name where a template is checked: a tool's parameters, if known."""

    tool: str
    names: frozenset[str] | None


class _Checker:
    def __init__(self, root: Mapping[Any, Any], path: str, base_dir: Path | None) -> None:
        self.root = root
        self.path = path
        self.base_dir = base_dir
        self.problems: list[Problem] = []
        # A section of the wrong type is pydantic's to report; references into it are not
        # checked, since every one of them would be a false "not defined".
        self.agents = self._declared("agents")
        self.tools = self._declared("tools")
        self.variables = self._declared("variables")
        self.vars = self._declared("vars")
        self.schemas: dict[str, dict[str, object]] = {}
        """Tool name -> its parameters, for the tools whose parameters are a valid schema."""

    def _declared(self, key: str) -> frozenset[str] | None:
        if key not in self.root and key != "agents":
            return frozenset()
        value = self.root.get(key)
        if not isinstance(value, Mapping):
            return None
        return frozenset(k for k in value if isinstance(k, str))

    def report(self, loc: Loc, message: str, *, severity: Severity = "error", at_key: bool = False) -> None:
        line, col = position(self.root, loc, at_key=at_key)
        text = f"{dotted(loc)}: {message}" if loc else message
        self.problems.append(Problem(self.path, line, col, text, severity))

    def run(self) -> None:
        self._start()
        for name, _ in _entries(self.root.get("agents")):
            if name == BACK:
                self.report(
                    ("agents", name),
                    f"{BACK!r} cannot name an agent: a handoff to {BACK!r} returns to the previous agent",
                    at_key=True,
                )
        for name, tool in _entries(self.root.get("tools")):
            self._tool(name, tool)
        for name, agent in _entries(self.root.get("agents")):
            self._agent(name, agent)
        for i, handoff in _items(self.root.get("handoffs")):
            self._handoff(("handoffs", i), handoff)
        for i, test in _items(self.root.get("tests")):
            self._test(("tests", i), test)
        self._reachability()

    # references

    def _start(self) -> None:
        start = self.root.get("start")
        if isinstance(start, str) and self.agents is not None and start not in self.agents:
            known = ", ".join(sorted(self.agents)) or "none"
            line, col = position(self.root, ("start",))
            message = (
                f"start agent {start!r} is not defined (agents: {known}){did_you_mean(start, self.agents)}"
            )
            self.problems.append(Problem(self.path, line, col, message))

    def _agent_ref(self, loc: Loc, value: object, *, allow_back: bool) -> None:
        if not isinstance(value, str) or self.agents is None:
            return
        if value in self.agents or (allow_back and value == BACK):
            return
        hint = did_you_mean(value, self.agents) or f" (agents: {', '.join(sorted(self.agents))})"
        if not allow_back and value == BACK:
            hint = " (a test names the agent the call is handed to, not 'back')"
        self.report(loc, f"no agent named {value!r}{hint}")

    def _tool_ref(self, loc: Loc, value: object, *, at_key: bool = False) -> None:
        if not isinstance(value, str) or self.tools is None:
            return
        if value in self.tools or value in BUILTIN_TOOLS:
            return
        known = sorted(self.tools)
        hint = did_you_mean(value, [*known, *BUILTIN_TOOLS]) or (
            f" (tools: {', '.join(known) or 'none'}; built-in: {', '.join(BUILTIN_TOOLS)})"
        )
        self.report(loc, f"no tool named {value!r}{hint}", at_key=at_key)

    # templates

    def _templates(self, loc: Loc, value: object, args: _Args | None = None) -> None:
        if not isinstance(value, str) or "{{" not in value:
            return
        # each `{{` up to the first `}}` after it, like PLACEHOLDER; scanned with find, not a
        # lazy regex, which is quadratic over a long text of `{{` with no `}}`
        pos = 0
        while (start := value.find("{{", pos)) >= 0:
            end = value.find("}}", start + 2)
            if end < 0:
                fragment = _short(value[start:], 30)
                self.report(loc, f"unclosed template {fragment!r}: a template ends with '}}}}'")
                return
            ref = _REFERENCE.fullmatch(value, start + 2, end)
            if ref is None:
                self._malformed(loc, value[start : end + 2], args)
            else:
                self._reference(loc, ref.group(1), ref.group(2), args)
            pos = end + 2

    def _malformed(self, loc: Loc, text: str, args: _Args | None) -> None:
        forms = "{{user.NAME}}, {{vars.NAME}} or {{args.NAME}}" if args else "{{user.NAME}} or {{vars.NAME}}"
        why = (
            "names in templates are letters, digits and '_'"
            if _DASHED_REFERENCE.fullmatch(text[2:-2])
            else f"a template is exactly {forms}"
        )
        self.report(loc, f"malformed template {_short(text, 60)!r}: {why}")

    def _reference(self, loc: Loc, scope: str, name: str, args: _Args | None) -> None:
        shown = f"{{{{{scope}.{name}}}}}"
        if scope == "args":
            if args is None:
                self.report(
                    loc, f"{shown}: tool arguments can only be used in a tool's http url, headers and body"
                )
            elif args.names is not None and name not in args.names:
                hint = did_you_mean(name, args.names)
                self.report(loc, f"{shown}: tool {args.tool!r} has no parameter {name!r}{hint}")
            return
        section = "variables" if scope == "user" else "vars"
        declared = self.variables if scope == "user" else self.vars
        if declared is not None and name not in declared:
            hint = did_you_mean(name, declared)
            self.report(loc, f"{shown}: {name!r} is not declared under '{section}'{hint}")

    # sections

    def _tool(self, name: str, tool: object) -> None:
        if not isinstance(tool, Mapping):
            return
        loc: Loc = ("tools", name)
        arg_names = self._parameters(name, tool)
        target = tool.get("python")
        if isinstance(target, str) and _PYTHON_TARGET.match(target):
            self._python(("tools", name, "python"), target)
        self._templates((*loc, "filler"), tool.get("filler"))
        http = tool.get("http")
        if not isinstance(http, Mapping):
            return
        args = _Args(name, arg_names)
        self._templates((*loc, "http", "url"), http.get("url"), args)
        for header, value in _entries(http.get("headers")):
            self._templates((*loc, "http", "headers", header), value, args)
        if "body" in http:
            body = http["body"]
            for at, text in _strings(body, (*loc, "http", "body")):
                self._templates(at, text, args)
            text_media = media_type(http.get("headers")) in TEXT_BODY_MEDIA
            if isinstance(body, str) and "{{" in body and not text_media:
                self.report((*loc, "http", "body"), TEXT_BODY_TEMPLATES)
        for var, _ in _entries(http.get("save")):
            if self.vars is not None and var not in self.vars:
                hint = did_you_mean(var, self.vars)
                self.report(
                    (*loc, "http", "save", var), f"{var!r} is not declared under 'vars'{hint}", at_key=True
                )

    def _parameters(self, name: str, tool: Mapping[Any, Any]) -> frozenset[str] | None:
        """Check a tool's parameters as a schema; the names {{args.x}} may use, None if unknown."""
        loc: Loc = ("tools", name, "parameters")
        if "parameters" not in tool:
            self.schemas[name] = dict(_DEFAULT_PARAMETERS)
            return frozenset()
        try:
            schema = _plain(tool["parameters"])
        except _TooBig:
            self.report(loc, "too deeply nested or too large to check")
            return None
        if not isinstance(schema, dict):
            return None  # not a mapping: pydantic reports it
        meta = Draft202012Validator(
            Draft202012Validator.META_SCHEMA, format_checker=Draft202012Validator.FORMAT_CHECKER
        )
        seen: set[tuple[Loc, str]] = set()
        for err in meta.iter_errors(schema):
            at = (*loc, *err.absolute_path)
            if (at, err.message) not in seen:
                seen.add((at, err.message))
                self.report(at, f"not a valid JSON Schema: {_short(err.message)}")
        properties = schema.get("properties")
        names = frozenset(properties) if isinstance(properties, dict) else frozenset()
        if seen:
            return names
        if schema.get("type") != "object":
            self.report(loc, "must be a JSON Schema of type 'object' (arguments are passed by name)")
            return names
        self.schemas[name] = schema
        return names

    def _python(self, loc: Loc, target: str) -> None:
        # Imported exactly as the runtime will import it (from sys.path), so a tool that
        # validates is a tool that loads during a call.
        module_name, _, attr = target.partition(":")
        try:
            module = importlib.import_module(module_name)
            function = getattr(module, attr, None)
        # A user module can raise anything while it is imported, even SystemExit: report it
        # as a problem of this file rather than crash the validator.
        except (Exception, SystemExit) as exc:
            hint = " (python tools import from sys.path: install the package or set PYTHONPATH)"
            missing = isinstance(exc, ModuleNotFoundError)
            self.report(
                loc,
                f"cannot import {module_name!r}: {type(exc).__name__}: {_short(str(exc))}{hint if missing else ''}",
            )
            return
        if function is None:
            self.report(loc, f"module {module_name!r} has no attribute {attr!r}")
        elif not callable(function):
            self.report(loc, f"{target!r} is not callable")

    def _arguments(self, loc: Loc, tool: object, arguments: object, *, partial: bool) -> None:
        """Check arguments against the tool's parameters; partial allows leaving some out."""
        if not isinstance(tool, str) or tool not in self.schemas or not isinstance(arguments, Mapping):
            return
        try:
            data = _plain(arguments)
            errors = list(Draft202012Validator(self.schemas[tool]).iter_errors(data))
        except _TooBig:
            self.report(loc, "too deeply nested or too large to check")
            return
        except Unresolvable as exc:
            self.report(
                ("tools", tool, "parameters"), f"arguments cannot be checked: cannot resolve $ref {exc.ref!r}"
            )
            return
        except RecursionError:
            self.report(
                ("tools", tool, "parameters"),
                "arguments cannot be checked: a $ref refers to itself without end",
            )
            return
        for err in errors:
            if partial and err.validator == "required":
                continue
            self.report(
                (*loc, *err.absolute_path),
                f"does not fit the parameters of tool {tool!r}: {_short(err.message)}",
            )

    def _agent(self, name: str, agent: object) -> None:
        if not isinstance(agent, Mapping):
            return
        loc: Loc = ("agents", name)
        for key in ("instructions", "greeting", "fallback"):
            self._templates((*loc, key), agent.get(key))
        for i, tool in _items(agent.get("tools")):
            self._tool_ref((*loc, "tools", i), tool)
        for i, handoff in _items(agent.get("handoffs")):
            self._handoff((*loc, "handoffs", i), handoff)
        for i, rule in _items(agent.get("rules")):
            if not isinstance(rule, Mapping):
                continue
            at: Loc = (*loc, "rules", i)
            self._agent_ref((*at, "handoff"), rule.get("handoff"), allow_back=True)
            self._templates((*at, "say"), rule.get("say"))
            call = rule.get("tool")
            if isinstance(call, Mapping):
                self._tool_ref((*at, "tool", "name"), call.get("name"))
                self._arguments(
                    (*at, "tool", "arguments"), call.get("name"), call.get("arguments"), partial=False
                )

    def _handoff(self, loc: Loc, handoff: object) -> None:
        if isinstance(handoff, Mapping):
            self._agent_ref((*loc, "to"), handoff.get("to"), allow_back=True)
            self._templates((*loc, "say"), handoff.get("say"))

    def _test(self, loc: Loc, test: object) -> None:
        if not isinstance(test, Mapping):
            return
        for tool, _ in _entries(test.get("tool_results")):
            self._tool_ref((*loc, "tool_results", tool), tool, at_key=True)
        for i, step in _items(test.get("steps")):
            expect = step.get("expect") if isinstance(step, Mapping) else None
            if not isinstance(expect, Mapping):
                continue
            at: Loc = (*loc, "steps", i, "expect")
            self._agent_ref((*at, "agent"), expect.get("agent"), allow_back=False)
            self._agent_ref((*at, "handoff"), expect.get("handoff"), allow_back=False)
            reply = expect.get("reply")
            if isinstance(reply, str):
                try:
                    re.compile(reply)
                except re.error as exc:
                    self.report((*at, "reply"), f"invalid regular expression: {exc}")
            for j, call in _items(expect.get("tool_calls")):
                if isinstance(call, Mapping):
                    self._tool_ref((*at, "tool_calls", j, "name"), call.get("name"))
                    self._arguments(
                        (*at, "tool_calls", j, "arguments"),
                        call.get("name"),
                        call.get("arguments"),
                        partial=True,
                    )

    def _reachability(self) -> None:
        start = self.root.get("start")
        if self.agents is None or not isinstance(start, str) or start not in self.agents:
            return
        agents = dict(_entries(self.root.get("agents")))

        def handoffs(spec: object) -> Iterator[object]:
            if isinstance(spec, Mapping):
                for _, handoff in _items(spec.get("handoffs")):
                    if isinstance(handoff, Mapping):
                        yield handoff.get("to")

        def targets(spec: object) -> Iterator[object]:
            yield from handoffs(spec)
            if isinstance(spec, Mapping):
                for _, rule in _items(spec.get("rules")):
                    if isinstance(rule, Mapping):
                        yield rule.get("handoff")

        # global handoffs are offered by every agent, so they are reachable from any of them
        everywhere = list(handoffs(self.root))
        reached, todo = {start}, [start]
        while todo:
            for target in [*targets(agents.get(todo.pop())), *everywhere]:
                if isinstance(target, str) and target in agents and target not in reached:
                    reached.add(target)
                    todo.append(target)
        for name in agents:
            if name not in reached:
                self.report(
                    ("agents", name),
                    f"agent {name!r} is unreachable: no handoff leads to it from the start agent {start!r}",
                    severity="warning",
                    at_key=True,
                )
