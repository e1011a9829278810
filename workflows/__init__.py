"""Workflow files: the YAML language agents are written in, validated into models."""

from ._load import Problem, WorkflowError, load_workflow, load_workflow_text
from ._model import AgentSpec, Defaults, ProviderSpec, RuleSpec, TurnSettings, Workflow
from ._template import TemplateError, placeholders, render

__all__ = [
    "AgentSpec", "Defaults", "Problem", "ProviderSpec", "RuleSpec", "TemplateError", "TurnSettings",
    "Workflow", "WorkflowError", "load_workflow", "load_workflow_text", "placeholders", "render",
]  # fmt: skip
