"""Reading workflow files: YAML -> Workflow, every problem reported as PATH:LINE:COL: message."""

from __future__ import annotations

import re
import types
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap
from ruamel.yaml.composer import Composer, ComposerError
from ruamel.yaml.error import MarkedYAMLError, StreamMark, YAMLError
from ruamel.yaml.events import AliasEvent, ScalarEvent
from ruamel.yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from ._errors import WorkflowsError
from ._limits import LIMITS
from ._model import Workflow
from ._validate import Problem, check_tree, did_you_mean, dotted, position

__all__ = [
    "Problem", "WorkflowError", "load_workflow", "load_workflow_text", "parse_yaml", "validate_file",
    "validate_text",
]  # fmt: skip


class WorkflowError(WorkflowsError):
    """A workflow file that cannot be used; carries every error found (warnings are not errors)."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = tuple(problems)
        first = str(self.problems[0]) if self.problems else "invalid workflow"
        more = f" (and {len(self.problems) - 1} more)" if len(self.problems) > 1 else ""
        super().__init__(first + more)


# -- YAML --------------------------------------------------------------------------------------

_CORE_TAG = "tag:yaml.org,2002:"
# What ruamel's scalar constructors raise, bare and without a position, for `!!int x`, `!!int`
# with no value, `2001-02-30`, `!!bool maybe`, `!!set` on a scalar.
_CONSTRUCTOR_ERRORS = (ValueError, KeyError, IndexError, TypeError, AttributeError, OverflowError)
_MERGE_TAG = _CORE_TAG + "merge"
# ruamel's scanner is quadratic in the number of open flow collections (2,000 `[` take seconds),
# so deeper nesting is refused before parsing. Brackets are counted without regard to quotes:
# a real workflow never has that many of them open at once.
_BRACKET = re.compile(r"[\[\]{}]")


class _BoundedComposer(Composer):
    """ruamel's composer, refusing a document past LIMITS while it is composed, at the node or
    alias that crosses the limit.

    An alias is the same node object again, so a few lines can name a tree of billions of nodes
    (billion laughs) that every later walk (validation, the tool that renders an http body)
    expands. Each node's expanded size and height are memoised when it is complete, so an alias
    costs one lookup and the count is linear in the file, however far it would expand.
    """

    def __init__(self, loader: Any = None) -> None:
        super().__init__(loader)
        # a reused anchor name is valid YAML (the later one wins); ruamel would warn on stderr
        self.warn_double_anchors = False
        self._size: dict[int, int] = {}
        self._height: dict[int, int] = {}
        self._total = 0
        self._level = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.parser.peek_event()
        mark = event.start_mark
        if isinstance(event, AliasEvent):
            node = super().compose_node(parent, index)
            if id(node) not in self._size:
                raise _refused(f"alias *{event.anchor} refers to a node that contains it", mark)
            self._count(self._size[id(node)], self._height[id(node)], mark, f"alias *{event.anchor}")
            return node
        if isinstance(event, ScalarEvent) and len(event.value) > LIMITS.string_chars:
            raise _refused(
                f"a string of {len(event.value)} characters, over the limit of {LIMITS.string_chars}", mark
            )
        self._count(1, 1, mark, None)
        self._level += 1
        node = super().compose_node(parent, index)
        self._level -= 1
        if isinstance(node, MappingNode):
            children = [child for pair in node.value for child in pair]
        elif isinstance(node, SequenceNode):
            children = node.value
        else:
            children = []
        self._size[id(node)] = 1 + sum(self._size[id(c)] for c in children)
        self._height[id(node)] = 1 + max((self._height[id(c)] for c in children), default=0)
        return node

    def _count(self, size: int, height: int, mark: StreamMark, alias: str | None) -> None:
        self._total += size
        if self._total > LIMITS.nodes:
            if alias:
                why = f"{alias} expands to {size} nodes, making the document larger than"
            else:
                why = "the document has more nodes than"
            raise _refused(f"{why} the limit of {LIMITS.nodes} (mappings, lists and values)", mark)
        if self._level + height > LIMITS.depth:
            what = f"{alias} nests" if alias else "nested"
            raise _refused(f"{what} more than {LIMITS.depth} levels deep (the limit)", mark)


def _refused(problem: str, mark: StreamMark) -> ComposerError:
    return ComposerError(None, None, problem, mark)


def _yaml(*, allow_duplicate_keys: bool = False) -> YAML:
    y = YAML(typ="rt")
    y.allow_duplicate_keys = allow_duplicate_keys
    y.Composer = _BoundedComposer
    return y


def _marked(exc: MarkedYAMLError, path: str) -> Problem:
    mark = exc.problem_mark or exc.context_mark
    line, col = (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)
    return Problem(path, line, col, f"YAML: {exc.problem or exc.context or 'invalid YAML'}")


def _nodes(root: Node) -> list[Node]:
    """Every node of a composed document once (aliases share nodes), without recursion."""
    seen: set[int] = set()
    out: list[Node] = []
    stack = [root]
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        out.append(node)
        if isinstance(node, MappingNode):
            for key, value in reversed(node.value):
                stack.extend((value, key))
        elif isinstance(node, SequenceNode):
            stack.extend(reversed(node.value))
    return out


def _duplicate_keys(root: Node, path: str) -> list[Problem]:
    # ruamel stops at the first duplicate key; finding them on the composed nodes reports all of
    # them, after which the file is read keeping each first value and checked further.
    problems = []
    for node in _nodes(root):
        if not isinstance(node, MappingNode):
            continue
        first: dict[tuple[str, str], int] = {}
        for key, _ in node.value:
            if not isinstance(key, ScalarNode) or key.tag == _MERGE_TAG:
                continue
            ident = (str(key.tag), str(key.value))
            if ident in first:
                mark = key.start_mark
                problems.append(
                    Problem(
                        path,
                        mark.line + 1,
                        mark.column + 1,
                        f"YAML: duplicate key {key.value!r} (first defined on line {first[ident]})",
                    )
                )
            else:
                first[ident] = key.start_mark.line + 1
    return problems


def _unreadable_scalars(root: Node, path: str) -> list[Problem]:
    """Scalars whose tag cannot construct them (`!!int x`, `2001-02-30`), each at its node."""
    problems = []
    constructor = _yaml().constructor
    for node in _nodes(root):
        if not isinstance(node, ScalarNode):
            continue
        try:
            constructor.construct_object(node, deep=True)
        except (YAMLError, *_CONSTRUCTOR_ERRORS):
            tag = str(node.tag).removeprefix(_CORE_TAG)
            mark = node.start_mark
            problems.append(
                Problem(path, mark.line + 1, mark.column + 1, f"YAML: {node.value!r} is not a valid {tag}")
            )
    return problems


def _at(text: str, offset: int, path: str, message: str) -> Problem:
    line = text.count("\n", 0, offset) + 1
    col = offset - text.rfind("\n", 0, offset)
    return Problem(path, line, col, message)


def _too_big(text: str, path: str) -> Problem | None:
    """The file size and the flow nesting, checked on the text before the parser sees it."""
    if len(text) > LIMITS.file_bytes or len(text.encode("utf-8", "surrogatepass")) > LIMITS.file_bytes:
        # the character where the file crosses the limit (bytes, for UTF-8 text)
        offset = len(text.encode("utf-8", "surrogatepass")[: LIMITS.file_bytes].decode("utf-8", "ignore"))
        return _at(text, offset, path, f"the file is over the limit of {LIMITS.file_bytes} bytes")
    depth = 0
    for m in _BRACKET.finditer(text):
        depth = depth + 1 if m.group() in "[{" else max(depth - 1, 0)
        if depth > LIMITS.depth:
            return _at(text, m.start(), path, f"YAML: more than {LIMITS.depth} '[' or '{{' open at once")
    return None


def _over_counts(root: Node, path: str) -> list[Problem]:
    """Agents, tools, rules and tests past their limits, each at the first one too many."""

    def get(node: Node, key: str) -> Node | None:
        if isinstance(node, MappingNode):
            for k, v in node.value:
                if isinstance(k, ScalarNode) and k.value == key:
                    return v  # type: ignore[no-any-return]
        return None

    def entries(node: Node | None) -> list[Node]:
        if isinstance(node, MappingNode):
            return [k for k, _ in node.value]
        if isinstance(node, SequenceNode):
            return list(node.value)
        return []

    agents = get(root, "agents")
    pairs = agents.value if isinstance(agents, MappingNode) else []
    rules = [rule for _, agent in pairs for rule in entries(get(agent, "rules"))]
    found = {
        "agents": entries(agents),
        "tools": entries(get(root, "tools")),
        "rules": rules,
        "tests": entries(get(root, "tests")),
    }
    problems = []
    for what, nodes in found.items():
        limit: int = getattr(LIMITS, what)
        if len(nodes) > limit:
            mark = nodes[limit].start_mark
            problems.append(
                Problem(path, mark.line + 1, mark.column + 1, f"more than {limit} {what} (the limit)")
            )
    return problems


def _read_yaml(text: str, path: str) -> tuple[Any, list[Problem]]:
    """The document (None if it cannot be read) and the YAML problems found on the way."""
    too_big = _too_big(text, path)
    if too_big is not None:
        return None, [too_big]
    # Composed once, then constructed from the nodes: parsing is most of a check's time, and the
    # nodes are needed anyway to find every duplicate key (the constructor stops at the first).
    yaml = _yaml(allow_duplicate_keys=True)
    try:
        root = yaml.compose(text)
    except MarkedYAMLError as exc:
        return None, [_marked(exc, path)]
    except YAMLError as exc:
        return None, [Problem(path, 1, 1, f"YAML: {exc}")]
    except RecursionError:
        return None, [Problem(path, 1, 1, "YAML: nested too deeply")]
    if root is None:
        return None, []
    over = _over_counts(root, path)
    if over:
        return None, over
    problems = _duplicate_keys(root, path)
    try:
        return yaml.constructor.construct_document(root), problems
    except MarkedYAMLError as exc:
        return None, [*problems, _marked(exc, path)]
    except YAMLError as exc:
        return None, [*problems, Problem(path, 1, 1, f"YAML: {exc}")]
    except RecursionError:
        return None, [*problems, Problem(path, 1, 1, "YAML: nested too deeply")]
    except _CONSTRUCTOR_ERRORS as exc:
        found = _unreadable_scalars(root, path) or [Problem(path, 1, 1, f"YAML: {exc}")]
        return None, [*problems, *found]


def parse_yaml(text: str, path: str) -> Any:
    """The YAML document in text; WorkflowError listing every YAML problem if it has any."""
    data, problems = _read_yaml(text, path)
    if problems:
        raise WorkflowError(problems)
    return data


# -- pydantic errors -> positioned problems ----------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Where:
    """A pydantic error location resolved against the models."""

    data: tuple[int | str, ...]
    """The location in the file: the parts that are keys and indexes, not union member names."""
    union_at: tuple[int | str, ...] | None
    """Where pydantic tried the members of a union, if it did."""
    key: bool
    """The error is about a mapping key, not its value."""
    fields: tuple[str, ...]
    """The keys allowed in the mapping that holds the last part (for did-you-mean)."""


def _unwrap(tp: Any) -> Any:
    """tp without Annotated and without `| None` (pydantic names no member for an optional)."""
    while True:
        members = _members(tp)
        if get_origin(tp) is Annotated:
            tp = get_args(tp)[0]
        elif members is not None and len(members) == 1:
            tp = members[0]
        else:
            return tp


def _members(tp: Any) -> tuple[Any, ...] | None:
    if get_origin(tp) in (Union, types.UnionType):
        return tuple(a for a in get_args(tp) if a is not type(None))
    return None


def _model(tp: Any) -> type[BaseModel] | None:
    return tp if isinstance(tp, type) and issubclass(tp, BaseModel) else None


def _where(loc: Sequence[int | str]) -> _Where:
    tp: Any = Workflow
    data: list[int | str] = []
    union_at: tuple[int | str, ...] | None = None
    key = False
    fields: tuple[str, ...] = ()
    for part in loc:
        if isinstance(part, str) and part.startswith("function-"):
            continue
        if part == "[key]":
            key = True
            continue
        tp = _unwrap(tp)
        members = _members(tp)
        if members is not None:
            if isinstance(part, str):
                # pydantic names the union member it tried (`LastN`, `literal[...]`, `str`)
                union_at = tuple(data) if union_at is None else union_at
                tp = next((m for m in members if getattr(m, "__name__", None) == part), Any)
                continue
            tp = Any
        model = _model(tp)
        fields = tuple(model.model_fields) if model else ()
        if model is not None:
            tp = model.model_fields[part].annotation if part in model.model_fields else Any
        elif get_origin(tp) is dict:
            tp = get_args(tp)[1]
        elif get_origin(tp) in (tuple, list):
            tp = get_args(tp)[0]
        else:
            tp = Any
        data.append(part)
    return _Where(tuple(data), union_at, key, fields)


def _join(messages: Sequence[str]) -> str:
    prefix = "Input should be "
    if len(messages) > 1 and all(m.startswith(prefix) for m in messages):
        rest = [m.removeprefix(prefix) for m in messages]
        return prefix + ", ".join(rest[:-1]) + " or " + rest[-1]
    return "; ".join(messages)


def _pydantic_problems(exc: ValidationError, root: Any, path: str) -> list[Problem]:
    located = []
    for err in exc.errors():
        where = _where(tuple(err["loc"]))
        kind = str(err["type"])
        msg = str(err["msg"]).removeprefix("Value error, ")
        if kind == "extra_forbidden":
            msg = "unknown key" + did_you_mean(where.data[-1] if where.data else "", where.fields)
        elif kind == "missing":
            msg = "required field is missing"
        elif where.key:
            msg = f"invalid name: {msg}"
        located.append((where, kind, msg))

    # A value that fits no member of a union gets one error per member. When one member got
    # further (a mapping with a bad field), only its errors are kept; otherwise they are merged.
    deeper_at = {
        w.union_at
        for w, kind, _ in located
        if w.union_at is not None and (w.data != w.union_at or kind == "missing")
    }
    merged: dict[tuple[int | str, ...], list[str]] = {}
    problems = []
    for where, kind, msg in located:
        at_parent = kind == "missing"
        if where.union_at is not None and where.data == where.union_at and not at_parent:
            if where.union_at not in deeper_at:
                merged.setdefault(where.union_at, []).append(msg)
            continue
        node = where.data[:-1] if at_parent else where.data
        line, col = position(root, node, at_key=kind == "extra_forbidden" or where.key)
        text = f"{dotted(where.data)}: {msg}" if where.data else msg
        problems.append(Problem(path, line, col, text))
    for data, messages in merged.items():
        line, col = position(root, data)
        text = _join(list(dict.fromkeys(messages)))
        problems.append(Problem(path, line, col, f"{dotted(data)}: {text}" if data else text))
    return problems


# -- files -------------------------------------------------------------------------------------


def _check(text: str, path: str, base_dir: Path | None) -> tuple[Workflow | None, list[Problem]]:
    data, problems = _read_yaml(text, path)
    if data is None and problems:
        return None, problems
    if not isinstance(data, CommentedMap):
        return None, [*problems, Problem(path, 1, 1, "a workflow must be a YAML mapping")]
    workflow: Workflow | None = None
    try:
        workflow = Workflow.model_validate(data)
    except ValidationError as exc:
        problems.extend(_pydantic_problems(exc, data, path))
    problems.extend(check_tree(data, path, base_dir=base_dir))
    unique = list(dict.fromkeys(problems))
    return workflow, sorted(unique, key=lambda p: (p.line, p.col))


def validate_text(text: str, path: str = "<workflow>", *, base_dir: Path | None = None) -> list[Problem]:
    """Every problem in a workflow's text, errors and warnings, in file order; never raises."""
    return _check(text, path, base_dir)[1]


def _read(path: Path) -> str:
    try:
        # A FIFO or socket would block open() until someone writes to it: the command would hang.
        if not path.is_dir() and path.exists() and not path.is_file():
            raise WorkflowError([Problem(str(path), 0, 0, "not a regular file")])
        with path.open("rb") as f:
            # one byte past the limit is enough to tell, and to say where the limit is crossed
            raw = f.read(LIMITS.file_bytes + 1)
        # an over-long file may end inside a character; it is refused for its size anyway
        text = raw.decode("utf-8", "ignore" if len(raw) > LIMITS.file_bytes else "strict")
        # universal newlines, as reading in text mode would
        return text.replace("\r\n", "\n").replace("\r", "\n")
    except FileNotFoundError:
        raise WorkflowError([Problem(str(path), 0, 0, "no such file")]) from None
    except IsADirectoryError:
        raise WorkflowError([Problem(str(path), 0, 0, "is a directory")]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise WorkflowError([Problem(str(path), 0, 0, f"cannot read: {exc}")]) from exc


def validate_file(path: str | Path) -> list[Problem]:
    """Every problem in a workflow file, errors and warnings, in file order; never raises."""
    p = Path(path)
    try:
        text = _read(p)
    except WorkflowError as exc:
        return list(exc.problems)
    return validate_text(text, str(p), base_dir=p.resolve().parent)


def load_workflow_text(text: str, path: str = "<workflow>", *, base_dir: Path | None = None) -> Workflow:
    """The workflow in text; WorkflowError carrying every error (warnings are not raised)."""
    workflow, problems = _check(text, path, base_dir)
    errors = [p for p in problems if p.severity == "error"]
    if errors or workflow is None:
        raise WorkflowError(errors)
    return workflow


def load_workflow(path: str | Path) -> Workflow:
    p = Path(path)
    return load_workflow_text(_read(p), str(p), base_dir=p.resolve().parent)
