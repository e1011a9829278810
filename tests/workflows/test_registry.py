"""A directory of workflow files loads once into a registry looked up by slug."""

from __future__ import annotations

from pathlib import Path

import pytest

from workflows import UnknownWorkflowError, WorkflowError, WorkflowRegistry

EXAMPLES = Path(__file__).resolve().parents[2] / "workflows" / "examples"


def workflow(slug: str) -> str:
    return f"version: 1\nslug: {slug}\nstart: main\nagents:\n  main:\n    instructions: Be brief.\n"


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.write_text(text, encoding="utf-8")
    return path


def test_loads_yaml_and_yml_files(tmp_path: Path) -> None:
    a = write(tmp_path, "a.yaml", workflow("alpha"))
    write(tmp_path, "b.yml", workflow("beta"))
    registry = WorkflowRegistry.load(tmp_path)
    assert registry.slugs == ("alpha", "beta")
    assert len(registry) == 2 and "alpha" in registry and "gamma" not in registry
    assert registry.get("alpha").slug == "alpha"
    assert registry.path("alpha") == a
    assert [wf.slug for wf in registry.workflows()] == ["alpha", "beta"]


def test_other_files_and_subdirectories_are_ignored(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", workflow("alpha"))
    write(tmp_path, "notes.txt", "not a workflow")
    (tmp_path / "nested").mkdir()
    write(tmp_path / "nested", "c.yaml", workflow("nested"))
    assert WorkflowRegistry.load(tmp_path).slugs == ("alpha",)


def test_unknown_slug_names_the_available_ones(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", workflow("alpha"))
    write(tmp_path, "b.yaml", workflow("beta"))
    registry = WorkflowRegistry.load(tmp_path)
    with pytest.raises(UnknownWorkflowError) as err:
        registry.get("gamma")
    assert str(err.value) == "no workflow 'gamma' (available: alpha, beta)"
    assert isinstance(err.value, KeyError)
    with pytest.raises(UnknownWorkflowError):
        registry.path("gamma")


def test_an_empty_directory_gives_an_empty_registry(tmp_path: Path) -> None:
    registry = WorkflowRegistry.load(tmp_path)
    assert len(registry) == 0
    with pytest.raises(UnknownWorkflowError, match=r"available: none"):
        registry.get("alpha")


def test_duplicate_slugs_name_both_files(tmp_path: Path) -> None:
    first = write(tmp_path, "a.yaml", workflow("alpha"))
    second = write(tmp_path, "b.yaml", workflow("alpha"))
    with pytest.raises(WorkflowError) as err:
        WorkflowRegistry.load(tmp_path)
    (problem,) = err.value.problems
    assert str(problem) == f"{second}: slug 'alpha' is already used by {first}"


def test_every_problem_of_every_file_is_collected(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", workflow("alpha"))
    write(tmp_path, "b.yaml", workflow("alpha"))
    bad = write(tmp_path, "c.yaml", workflow("gamma").replace("instructions", "instruction"))
    broken = write(tmp_path, "d.yml", "version: 1\nslug: [unclosed\n")
    with pytest.raises(WorkflowError) as err:
        WorkflowRegistry.load(tmp_path)
    paths = [p.path for p in err.value.problems]
    assert str(tmp_path / "b.yaml") in paths and str(bad) in paths and str(broken) in paths
    assert "(and" in str(err.value)


def test_a_missing_directory_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(WorkflowError, match="no such directory"):
        WorkflowRegistry.load(tmp_path / "nowhere")


def test_the_bundled_examples_load() -> None:
    registry = WorkflowRegistry.load(EXAMPLES)
    assert "front-desk" in registry
