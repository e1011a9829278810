"""A call's typed data: `user` (the caller's user_data, bound once) and `vars` (state tools set)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from types import MappingProxyType

import structlog

from ._errors import VariableError
from ._model import VariableSpec, Workflow, value_fits

VariableValue = str | int | float | bool | None
"""What a variable holds: one JSON scalar, or None for an optional variable with no value."""

log = structlog.get_logger("voicerun.workflows")

_ARTICLE = {"string": "a string", "number": "a number", "integer": "an integer", "boolean": "a boolean"}


def _shown(value: object, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _expected(spec: VariableSpec) -> str:
    if spec.type == "enum":
        return "one of " + ", ".join(repr(v) for v in spec.values or ())
    return _ARTICLE[spec.type]


def _problem(where: str, spec: VariableSpec, value: object) -> str | None:
    if value_fits(spec, value):
        return None
    return f"{where}: expected {_expected(spec)}, got {_shown(value)}"


def bind_user_data(workflow: Workflow, user_data: Mapping[str, object]) -> dict[str, VariableValue]:
    """The `user` scope of a call: every declared variable, checked, with defaults applied.

    A key whose value is None counts as absent. An optional variable that is absent and has no
    default is bound to None, so a template naming it renders as an empty string.

    Keys the workflow does not declare are accepted and dropped (only their names are logged, at
    debug): callers pass extra metadata (CRM ids, campaign tags) along with the data a workflow
    uses, and rejecting it would make every caller track each workflow's exact declaration.
    Dropping it keeps undeclared data out of templates and the LLM's prompt.

    Raises VariableError listing every problem, e.g. `user_data.age: expected an integer, got 'ten'`.
    """
    bound: dict[str, VariableValue] = {}
    problems: list[str] = []
    for name, spec in workflow.variables.items():
        value = user_data.get(name)
        if value is None:
            if spec.required:
                problems.append(f"user_data.{name}: required but missing")
            bound[name] = spec.default
            continue
        problem = _problem(f"user_data.{name}", spec, value)
        if problem is not None:
            problems.append(problem)
        else:
            bound[name] = value  # type: ignore[assignment]  # value_fits checked it is a scalar
    if problems:
        raise VariableError(problems)
    ignored = sorted(k for k in user_data if k not in workflow.variables)
    if ignored:
        log.debug("user_data_ignored", workflow=workflow.slug, keys=ignored)
    return bound


class CallState:
    """The data of one call: `user` (read-only, bound from user_data) and `vars` (set via set()).

    Every var starts at its declared default (None if it has none).
    """

    def __init__(self, workflow: Workflow, user: Mapping[str, VariableValue]) -> None:
        self._specs = workflow.vars
        self._user = dict(user)
        self._vars: dict[str, VariableValue] = {name: spec.default for name, spec in self._specs.items()}
        self.user: Mapping[str, VariableValue] = MappingProxyType(self._user)
        self.vars: Mapping[str, VariableValue] = MappingProxyType(self._vars)

    @classmethod
    def bind(cls, workflow: Workflow, user_data: Mapping[str, object]) -> CallState:
        """Check user_data (see bind_user_data) and start the call's state."""
        return cls(workflow, bind_user_data(workflow, user_data))

    @property
    def declared(self) -> Mapping[str, VariableSpec]:
        return self._specs

    def set(self, name: str, value: object) -> None:
        """Set one var; VariableError if it is not declared or the value does not fit its type."""
        self.update({name: value})

    def update(self, values: Mapping[str, object]) -> None:
        """Set several vars at once: all of them, or (VariableError naming every problem) none."""
        problems = list(self._problems(values.items()))
        if problems:
            raise VariableError(problems)
        for name, value in values.items():
            self._vars[name] = value  # type: ignore[assignment]  # _problems checked the type

    def _problems(self, items: Iterable[tuple[str, object]]) -> Iterable[str]:
        for name, value in items:
            spec = self._specs.get(name)
            if spec is None:
                known = ", ".join(sorted(self._specs)) or "none"
                yield f"vars.{name}: not declared (declared vars: {known})"
                continue
            problem = _problem(f"vars.{name}", spec, value)
            if problem is not None:
                yield problem
