"""Workflow files: the YAML language agents are written in, validated into models, and the
runtime that carries a call through them (rules, tools, handoffs, variables)."""

from ._errors import ToolError, UnknownWorkflowError, VariableError, WorkflowRuntimeError, WorkflowsError
from ._limits import LIMITS, Limits
from ._load import Problem, WorkflowError, load_workflow, load_workflow_text, validate_file, validate_text
from ._model import (
    AgentSpec,
    Defaults,
    ExpectSpec,
    HandoffSpec,
    ProviderSpec,
    RuleSpec,
    TestSpec,
    ToolCallSpec,
    TurnSettings,
    Workflow,
    keypad_digits,
    keypad_turn,
)
from ._registry import WorkflowRegistry
from ._runtime import WorkflowConversation
from ._template import TemplateError, placeholders, render
from ._tools import ToolBox, Transfer
from ._validate import Severity, workflow_json_schema
from ._variables import CallState, VariableValue, bind_user_data

__all__ = [
    "LIMITS", "AgentSpec", "CallState", "Defaults", "ExpectSpec", "HandoffSpec", "Limits", "Problem", "ProviderSpec",
    "RuleSpec", "Severity", "TemplateError", "TestSpec", "ToolBox", "ToolCallSpec", "ToolError",
    "Transfer", "TurnSettings", "UnknownWorkflowError", "VariableError", "VariableValue", "Workflow",
    "WorkflowConversation", "WorkflowError", "WorkflowRegistry", "WorkflowRuntimeError", "WorkflowsError",
    "bind_user_data", "keypad_digits", "keypad_turn", "load_workflow", "load_workflow_text", "placeholders", "render", "validate_file",
    "validate_text", "workflow_json_schema",
]  # fmt: skip
