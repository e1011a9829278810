"""Templates: `{{user.name}}` and `{{vars.x}}` and nothing else.

No attribute access, no expressions, no code: a template can only read a value by name, so a
workflow author (or a caller's user_data) cannot make the runtime do anything else.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from ._errors import WorkflowsError

PLACEHOLDER = re.compile(r"\{\{\s*(user|vars)\.([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
_WITH_ARGS = re.compile(r"\{\{\s*(user|vars|args)\.([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")


class TemplateError(WorkflowsError):
    """A template names a value that the call does not have."""


def placeholders(text: str) -> list[tuple[str, str]]:
    return [(m.group(1), m.group(2)) for m in PLACEHOLDER.finditer(text)]


def render(
    text: str,
    *,
    user: Mapping[str, Any],
    vars: Mapping[str, Any] | None = None,
    args: Mapping[str, Any] | None = None,
) -> str:
    """Fill the placeholders; `{{args.x}}` (a tool's arguments) only when args is given."""
    scopes = {"user": user, "vars": vars or {}}
    pattern = PLACEHOLDER
    if args is not None:
        scopes["args"] = args
        pattern = _WITH_ARGS

    def value(m: re.Match[str]) -> str:
        scope, name = m.group(1), m.group(2)
        if name not in scopes[scope]:
            raise TemplateError(f"{{{{{scope}.{name}}}}} has no value (not in this call's {scope} data)")
        v = scopes[scope][name]
        return "" if v is None else str(v)

    return pattern.sub(value, text)
