"""The workflows a deployment serves, loaded once from a directory and looked up by slug."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path

from ._errors import UnknownWorkflowError
from ._load import Problem, WorkflowError, load_workflow
from ._model import Workflow

SUFFIXES = (".yaml", ".yml")


class WorkflowRegistry:
    """Workflows by slug; read-only once loaded.

    Not a Mapping on purpose: Mapping.get would turn an unknown slug into None, and a caller that
    asks for a workflow by slug wants the error that lists the available ones.
    """

    def __init__(self, workflows: Mapping[str, tuple[Workflow, Path]]) -> None:
        self._entries = dict(sorted(workflows.items()))

    @classmethod
    def load(cls, directory: str | Path) -> WorkflowRegistry:
        """Load every *.yaml and *.yml directly in `directory` (not its subdirectories).

        Raises WorkflowError carrying every problem of every file, including slugs used twice.
        """
        root = Path(directory)
        if not root.is_dir():
            raise WorkflowError([Problem(str(root), 0, 0, "no such directory")])
        paths = sorted(p for p in root.iterdir() if p.suffix in SUFFIXES and p.is_file())
        entries: dict[str, tuple[Workflow, Path]] = {}
        problems: list[Problem] = []
        for path in paths:
            try:
                wf = load_workflow(path)
            except WorkflowError as exc:
                problems.extend(exc.problems)
                continue
            if wf.slug in entries:
                first = entries[wf.slug][1]
                problems.append(Problem(str(path), 0, 0, f"slug {wf.slug!r} is already used by {first}"))
                continue
            entries[wf.slug] = (wf, path)
        if problems:
            raise WorkflowError(problems)
        return cls(entries)

    def get(self, slug: str) -> Workflow:
        """The workflow with this slug; UnknownWorkflowError (a KeyError) names the available ones."""
        return self._entry(slug)[0]

    def path(self, slug: str) -> Path:
        """The file the workflow was loaded from."""
        return self._entry(slug)[1]

    @property
    def slugs(self) -> tuple[str, ...]:
        return tuple(self._entries)

    def workflows(self) -> tuple[Workflow, ...]:
        """Every workflow, in slug order."""
        return tuple(wf for wf, _ in self._entries.values())

    def _entry(self, slug: str) -> tuple[Workflow, Path]:
        try:
            return self._entries[slug]
        except KeyError:
            known = ", ".join(self._entries) or "none"
            raise UnknownWorkflowError(f"no workflow {slug!r} (available: {known})") from None

    def __contains__(self, slug: object) -> bool:
        return slug in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)
