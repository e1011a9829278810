"""The workflows package's error tree: one root, then file errors (WorkflowError, in _load.py),
template errors (TemplateError, in _template.py) and errors while a workflow runs (below)."""

from __future__ import annotations

from collections.abc import Sequence


class WorkflowsError(Exception):
    """Root of every error the workflows package raises."""


class WorkflowRuntimeError(WorkflowsError):
    """Errors raised once workflows are loaded: binding a call's data, its state, its tools."""


class VariableError(WorkflowRuntimeError):
    """A call's user_data or a state variable does not fit its declaration; lists every problem."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = tuple(problems)
        super().__init__("; ".join(self.problems) or "invalid variables")


class ToolError(WorkflowRuntimeError):
    """A tool an agent lists cannot be set up (neither defined by the workflow nor built in)."""


class UnknownWorkflowError(WorkflowRuntimeError, KeyError):
    """No workflow with this slug is registered; the message lists the ones that are."""

    def __str__(self) -> str:
        # KeyError's own __str__ shows the repr of its argument (quotes, escapes); show the message.
        return str(self.args[0]) if self.args else "unknown workflow"
