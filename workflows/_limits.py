"""How big a workflow file may be. Every limit is far past what a real workflow reaches (the
largest example is 4 KB and a few hundred YAML nodes) and low enough that checking a file at the
limit stays well under a second: a file is text a caller may hand to the control API, and a file
that is too big is refused at the line and column where it crosses the limit, before the work
that would make it slow (the file size before reading it, the node count while it is parsed).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["LIMITS", "Limits"]


@dataclass(frozen=True, slots=True)
class Limits:
    file_bytes: int = 1024 * 1024
    """A workflow file's size; checked before it is read."""
    nodes: int = 20_000
    """YAML nodes (mappings, lists and scalars) with every alias expanded: an alias counts the
    whole tree it names, so a billion-laughs file is refused at the alias that crosses the limit.
    Parsing (about 60 µs a node with ruamel) stops there, so this bounds a check's time."""
    depth: int = 64
    """Nesting of mappings and lists, aliases expanded; also the most '[' or '{' open at once."""
    string_chars: int = 100_000
    """One string (an agent's instructions, a tool's description): about 25,000 LLM tokens."""
    agents: int = 100
    rules: int = 2_000
    """Rules of all agents together."""
    tools: int = 200
    tests: int = 500


LIMITS = Limits()
