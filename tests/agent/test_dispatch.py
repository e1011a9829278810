"""A dispatched job's metadata: a call's parameters, or one clear error naming what is wrong."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent._dispatch import MAX_METADATA_BYTES, Dispatch, DispatchError, redacted


def test_a_full_payload_becomes_the_calls_parameters() -> None:
    d = Dispatch.parse(json.dumps({
        "workflow_slug": "daily-call", "call_id": "c-123", "user_id": "user-123",
        "user_data": {"name": "John Doe"}, "metadata": {"source": "mobile-app"}, "tenant": "acme",
    }))  # fmt: skip
    assert (d.workflow_slug, d.call_id, d.user_id, d.tenant) == ("daily-call", "c-123", "user-123", "acme")
    assert d.user_data == {"name": "John Doe"} and d.metadata == {"source": "mobile-app"}


def test_only_the_workflow_is_required() -> None:
    d = Dispatch.parse(b'{"workflow_slug": "front-desk"}')
    assert d.call_id is None and d.user_data == {} and d.tenant is None


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("", "job metadata is empty"),
        ("   ", "job metadata is empty"),
        ("{not json", "job metadata is not valid JSON (Expecting property name"),
        ("[1, 2]", "must be a JSON object, got list"),
        ('"front-desk"', "must be a JSON object, got str"),
        ("{}", "workflow_slug is required"),
        ('{"workflow_slug": "Front Desk!"}', "workflow_slug has characters or a length"),
        ('{"workflow_slug": "a", "user_data": [1]}', "user_data Input should be a valid dictionary"),
        ('{"workflow_slug": "a", "room": "x"}', "room is not a field (fields: workflow_slug"),
        ('{"workflow_slug": "a", "call_id": "../../etc"}', "call_id has characters"),
        ("[" * 60_000, "is not valid JSON"),  # nested past the recursion limit
    ],
)
def test_a_bad_payload_is_one_error_naming_the_problem(raw: str, message: str) -> None:
    with pytest.raises(DispatchError) as caught:
        Dispatch.parse(raw)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_an_oversized_or_undecodable_payload_is_refused_before_parsing() -> None:
    with pytest.raises(DispatchError, match="larger than"):
        Dispatch.parse('{"workflow_slug": "a", "metadata": {"x": "' + "y" * MAX_METADATA_BYTES + '"}}')
    with pytest.raises(DispatchError, match="not UTF-8"):
        Dispatch.parse(b"\xff\xfe{}")


@given(st.text(max_size=300) | st.binary(max_size=300))
def test_any_payload_parses_or_fails_with_a_dispatch_error(raw: str | bytes) -> None:
    try:
        Dispatch.parse(raw)
    except DispatchError:
        pass


def test_a_payload_in_a_log_line_is_short_and_has_no_control_characters() -> None:
    line = redacted("a\nb\x00" + "z" * 500)
    assert line.startswith("a\\x0ab\\x00") and line.endswith("...") and len(line) < 140
