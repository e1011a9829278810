"""Workflow files load into models, and mistakes are reported at their line and column."""

from __future__ import annotations

from pathlib import Path

import pytest

from workflows import TemplateError, WorkflowError, load_workflow, load_workflow_text, render

EXAMPLES = Path(__file__).resolve().parents[2] / "workflows" / "examples"

MINIMAL = """\
version: 1
slug: tiny
start: main
agents:
  main:
    instructions: Be brief.
"""


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_every_example_is_valid(path: Path) -> None:
    wf = load_workflow(path)
    assert wf.start in wf.agents


def test_defaults_apply_and_agents_override() -> None:
    text = MINIMAL + "    tts: {provider: polly}\n"
    wf = load_workflow_text(text)
    assert wf.stt_for("main").provider == "whisper"
    assert wf.tts_for("main").provider == "polly"
    assert wf.turn_for("main").end_of_speech_ms == 300


def problems(text: str) -> list[str]:
    with pytest.raises(WorkflowError) as err:
        load_workflow_text(text, "wf.yaml")
    return [str(p) for p in err.value.problems]


def test_unknown_key_is_reported_at_the_key() -> None:
    assert problems(MINIMAL + "    greting: hi\n") == [
        "wf.yaml:7:5: agents.main.greting: unknown key (did you mean 'greeting'?)"
    ]


def test_wrong_type_is_reported_at_the_value() -> None:
    text = MINIMAL.replace("instructions: Be brief.", "instructions: [1, 2]")
    assert problems(text) == ["wf.yaml:6:19: agents.main.instructions: Input should be a valid string"]


def test_missing_required_field_points_at_its_parent() -> None:
    text = MINIMAL.replace("    instructions: Be brief.\n", "    greeting: hi\n")
    assert problems(text) == ["wf.yaml:6:5: agents.main.instructions: required field is missing"]


def test_invalid_regex_is_reported_at_the_rule() -> None:
    text = MINIMAL + "    rules:\n      - match: '(unclosed'\n        say: x\n"
    (p,) = problems(text)
    assert p.startswith("wf.yaml:8:16: agents.main.rules.0.match: invalid regular expression")


def test_start_agent_must_exist() -> None:
    (p,) = problems(MINIMAL.replace("start: main", "start: nobody"))
    assert "start agent 'nobody' is not defined (agents: main)" in p


def test_yaml_syntax_and_duplicate_keys() -> None:
    (p,) = problems("version: 1\nslug: [oops\n")
    assert p.startswith("wf.yaml:3:1: YAML:")
    (p,) = problems(MINIMAL + "slug: again\n")
    assert p.startswith("wf.yaml:7:1: YAML:") and "duplicate key" in p


def test_a_workflow_must_be_a_mapping() -> None:
    assert problems("- just\n- a list\n") == ["wf.yaml:1:1: a workflow must be a YAML mapping"]


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(WorkflowError, match=r"nope.yaml: no such file"):
        load_workflow(tmp_path / "nope.yaml")


def test_templates_read_user_values_and_nothing_else() -> None:
    assert render("Hi {{ user.name }}!", user={"name": "Ann"}) == "Hi Ann!"
    # names are keys in the call's data, never attributes: nothing reaches Python objects
    with pytest.raises(TemplateError):
        render("{{user.__class__}}", user={"name": "x"})
    assert render("{{ user.name.upper }}", user={"name": "x"}) == "{{ user.name.upper }}"
    with pytest.raises(TemplateError, match=r"\{\{user.age\}\} has no value"):
        render("{{user.age}}", user={})


def test_a_stage_may_be_a_name_or_a_fallback_list_and_local_is_the_embedded_engine() -> None:
    wf = load_workflow_text(
        MINIMAL + "    tts: [polly, {provider: openai, model: gpt-4o-mini-tts}, local]\n    stt: deepgram\n"
    )
    assert [(s.provider, s.model) for s in wf.tts_for("main").chain()] == [
        ("polly", None),
        ("openai", "gpt-4o-mini-tts"),
        ("hibari", None),
    ]
    assert wf.stt_for("main").provider == "deepgram" and wf.stt_for("main").fallback == ()


def test_an_unknown_provider_names_the_ones_available() -> None:
    (p,) = problems(MINIMAL + "    llm: {provider: gpt}\n")
    assert (
        p
        == "wf.yaml:7:21: agents.main.llm.provider: unknown provider 'gpt' (available: rules, openai, local)"
    )
