"""Templates: `{{user.name}}` and `{{vars.x}}` and nothing else.

No attribute access, no expressions, no code: a template can only read a value by name, so a
workflow author (or a caller's user_data) cannot make the runtime do anything else.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

PLACEHOLDER = re.compile(r"\{\{\s*(user|vars)\.([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")


class TemplateError(Exception):
    """A template names a value that the call does not have."""


def placeholders(text: str) -> list[tuple[str, str]]:
    return [(m.group(1), m.group(2)) for m in PLACEHOLDER.finditer(text)]


def render(text: str, *, user: Mapping[str, Any], vars: Mapping[str, Any] | None = None) -> str:
    scopes = {"user": user, "vars": vars or {}}

    def value(m: re.Match[str]) -> str:
        scope, name = m.group(1), m.group(2)
        if name not in scopes[scope]:
            raise TemplateError(f"{{{{{scope}.{name}}}}} has no value (not in this call's {scope} data)")
        v = scopes[scope][name]
        return "" if v is None else str(v)

    return PLACEHOLDER.sub(value, text)
