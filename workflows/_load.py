"""Reading workflow files: YAML -> Workflow, every problem reported as PATH:LINE:COL: message."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError, YAMLError

from ._model import Workflow


@dataclass(frozen=True, slots=True)
class Problem:
    path: str
    line: int
    col: int
    message: str

    def __str__(self) -> str:
        if self.line <= 0:
            return f"{self.path}: {self.message}"
        return f"{self.path}:{self.line}:{self.col}: {self.message}"


class WorkflowError(Exception):
    """A workflow file that cannot be used; carries every problem found."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = tuple(problems)
        first = str(self.problems[0]) if self.problems else "invalid workflow"
        more = f" (and {len(self.problems) - 1} more)" if len(self.problems) > 1 else ""
        super().__init__(first + more)


def _yaml() -> YAML:
    y = YAML(typ="rt")
    y.allow_duplicate_keys = False
    return y


def parse_yaml(text: str, path: str) -> Any:
    try:
        return _yaml().load(text)
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)
        what = exc.problem or exc.context or "invalid YAML"
        raise WorkflowError([Problem(path, line, col, f"YAML: {what}")]) from exc
    except YAMLError as exc:
        raise WorkflowError([Problem(path, 1, 1, f"YAML: {exc}")]) from exc


def _position(root: Any, loc: Sequence[int | str], at_key: bool) -> tuple[int, int]:
    """Line and column (1-based) of the YAML node a pydantic error location points at."""
    node, line, col = root, 0, 0
    for i, part in enumerate(loc):
        last = i == len(loc) - 1
        if isinstance(node, CommentedMap) and part in node:
            line, col = node.lc.key(part) if (at_key and last) else node.lc.value(part)
            if not (at_key and last):
                vline, vcol = node.lc.value(part)
                line, col = (vline, vcol) if vline is not None else node.lc.key(part)
            node = node[part]
        elif isinstance(node, CommentedSeq) and isinstance(part, int) and part < len(node):
            line, col = node.lc.item(part)
            node = node[part]
        else:
            break
    return line + 1, col + 1


def _message(err: Any) -> str:
    loc = ".".join(str(p) for p in err["loc"] if not str(p).startswith("function-"))
    msg = str(err["msg"]).removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        return f"{loc}: unknown key"
    if err["type"] == "missing":
        return f"{loc}: required field is missing"
    return f"{loc}: {msg}" if loc else msg


def load_workflow_text(text: str, path: str = "<workflow>") -> Workflow:
    data = parse_yaml(text, path)
    if not isinstance(data, CommentedMap):
        raise WorkflowError([Problem(path, 1, 1, "a workflow must be a YAML mapping")])
    try:
        return Workflow.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = tuple(err["loc"])
            at_key = err["type"] in ("extra_forbidden",)
            if err["type"] == "missing":
                loc = loc[:-1]
            line, col = _position(data, loc, at_key)
            problems.append(Problem(path, line, col, _message(err)))
        raise WorkflowError(sorted(problems, key=lambda p: (p.line, p.col))) from exc


def load_workflow(path: str | Path) -> Workflow:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise WorkflowError([Problem(str(p), 0, 0, "no such file")]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise WorkflowError([Problem(str(p), 0, 0, f"cannot read: {exc}")]) from exc
    return load_workflow_text(text, str(p))
