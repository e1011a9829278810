"""user_data is checked against the declared variables; call state (vars) is typed."""

from __future__ import annotations

from typing import Any

import pytest
from structlog.testing import capture_logs

from workflows import CallState, VariableError, Workflow, bind_user_data, render

WORKFLOW = Workflow.model_validate(
    {
        "version": 1,
        "slug": "vars-check",
        "start": "main",
        "variables": {
            "name": {"type": "string", "required": True},
            "age": {"type": "integer"},
            "balance": {"type": "number", "default": 0},
            "vip": {"type": "boolean", "default": False},
            "tier": {"type": "enum", "values": ["gold", "silver"], "default": "silver"},
            "nickname": {"type": "string"},
        },
        "vars": {
            "party_size": {"type": "integer", "default": 2},
            "slot": {"type": "string"},
            "seating": {"type": "enum", "values": ["inside", "terrace"]},
        },
        "agents": {"main": {"instructions": "Hello {{user.name}}."}},
    }
)


def problems(user_data: dict[str, Any]) -> tuple[str, ...]:
    with pytest.raises(VariableError) as err:
        bind_user_data(WORKFLOW, user_data)
    return err.value.problems


def test_defaults_apply_and_optional_absent_is_none() -> None:
    assert bind_user_data(WORKFLOW, {"name": "Ada"}) == {
        "name": "Ada",
        "age": None,
        "balance": 0,
        "vip": False,
        "tier": "silver",
        "nickname": None,
    }


def test_given_values_are_kept() -> None:
    bound = bind_user_data(WORKFLOW, {"name": "Ada", "age": 36, "balance": 12.5, "vip": True, "tier": "gold"})
    assert (
        bound["age"] == 36 and bound["balance"] == 12.5 and bound["vip"] is True and bound["tier"] == "gold"
    )


def test_required_missing_is_named() -> None:
    assert problems({}) == ("user_data.name: required but missing",)
    assert problems({"name": None}) == ("user_data.name: required but missing",)


def test_wrong_type_names_the_variable_and_the_value() -> None:
    with pytest.raises(VariableError, match=r"^user_data\.age: expected an integer, got 'ten'$"):
        bind_user_data(WORKFLOW, {"name": "Ada", "age": "ten"})


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("age", True, "user_data.age: expected an integer, got True"),
        ("age", 3.5, "user_data.age: expected an integer, got 3.5"),
        ("balance", "12", "user_data.balance: expected a number, got '12'"),
        ("vip", "yes", "user_data.vip: expected a boolean, got 'yes'"),
        ("name", 7, "user_data.name: expected a string, got 7"),
        ("tier", "bronze", "user_data.tier: expected one of 'gold', 'silver', got 'bronze'"),
    ],
)
def test_each_type_is_checked(key: str, value: object, expected: str) -> None:
    assert problems({"name": "Ada", key: value}) == (expected,)


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(VariableError) as err:
        bind_user_data(WORKFLOW, {"age": "ten", "tier": "bronze"})
    assert len(err.value.problems) == 3
    assert str(err.value) == "; ".join(err.value.problems)


def test_unknown_keys_are_accepted_and_dropped() -> None:
    with capture_logs() as logs:
        bound = bind_user_data(WORKFLOW, {"name": "Ada", "crm_id": "x-1", "campaign": {"a": 1}})
    assert "crm_id" not in bound and "campaign" not in bound
    (event,) = [e for e in logs if e["event"] == "user_data_ignored"]
    assert event["keys"] == ["campaign", "crm_id"]
    assert "x-1" not in repr(event)  # names only, never values


def test_a_workflow_without_variables_binds_nothing() -> None:
    bare = WORKFLOW.model_copy(update={"variables": {}})
    assert bind_user_data(bare, {"anything": 1}) == {}


def test_call_state_starts_at_the_declared_defaults() -> None:
    state = CallState.bind(WORKFLOW, {"name": "Ada"})
    assert dict(state.vars) == {"party_size": 2, "slot": None, "seating": None}
    assert state.user["name"] == "Ada"
    assert render("{{user.name}} x{{vars.party_size}} {{vars.slot}}", user=state.user, vars=state.vars) == (
        "Ada x2 "
    )


def test_call_state_bind_rejects_bad_user_data() -> None:
    with pytest.raises(VariableError, match=r"user_data\.name"):
        CallState.bind(WORKFLOW, {})


def test_set_checks_the_declared_type() -> None:
    state = CallState.bind(WORKFLOW, {"name": "Ada"})
    state.set("party_size", 4)
    state.set("seating", "terrace")
    assert state.vars["party_size"] == 4 and state.vars["seating"] == "terrace"
    with pytest.raises(VariableError, match=r"^vars\.party_size: expected an integer, got 'four'$"):
        state.set("party_size", "four")
    with pytest.raises(
        VariableError, match=r"^vars\.seating: expected one of 'inside', 'terrace', got 'roof'$"
    ):
        state.set("seating", "roof")
    with pytest.raises(VariableError, match=r"vars\.slot: expected a string, got None"):
        state.set("slot", None)
    assert state.vars["party_size"] == 4 and state.vars["seating"] == "terrace"


def test_set_rejects_an_undeclared_name() -> None:
    state = CallState.bind(WORKFLOW, {"name": "Ada"})
    with pytest.raises(
        VariableError, match=r"^vars\.colour: not declared \(declared vars: party_size, seating, slot\)$"
    ):
        state.set("colour", "red")


def test_update_is_all_or_nothing() -> None:
    state = CallState.bind(WORKFLOW, {"name": "Ada"})
    with pytest.raises(VariableError) as err:
        state.update({"slot": "18:00", "party_size": "many"})
    assert err.value.problems == ("vars.party_size: expected an integer, got 'many'",)
    assert state.vars["slot"] is None


def test_state_is_only_changed_through_set() -> None:
    state = CallState.bind(WORKFLOW, {"name": "Ada"})
    with pytest.raises(TypeError):
        state.vars["slot"] = "x"  # type: ignore[index]
    with pytest.raises(TypeError):
        state.user["name"] = "Eve"  # type: ignore[index]
