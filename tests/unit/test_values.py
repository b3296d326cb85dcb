"""The value rules every storage applies (sagaz.values)."""

import pytest

from sagaz.values import UnstorableValueError, check_json, check_text, storable_text


def test_plain_json_passes_and_is_returned_as_text() -> None:
    assert check_json({"a": ["é", "😀", 1.5, None]}, "context") == '{"a": ["é", "😀", 1.5, null]}'


def test_an_escaped_backslash_before_u0000_is_not_a_nul() -> None:
    check_json({"path": "C:\\u0000dir"}, "context")  # a backslash, then the letters u0000


@pytest.mark.parametrize(("value", "where", "kind"), [
    ({"a": {"b": ["x", "y\x00"]}}, "context['a']['b'][1]", "NUL"),
    ({"a": "\ud800"}, "context['a']", "surrogate"),
    ({"k\x00": 1}, "a key of context", "NUL"),
    ([{"a": "\udfff"}], "context[0]['a']", "surrogate"),
])
def test_the_offending_place_is_named(value: object, where: str, kind: str) -> None:
    with pytest.raises(UnstorableValueError) as raised:
        check_json(value, "context")
    assert str(raised.value).startswith(f"{where} holds ")
    assert kind in str(raised.value) and "PostgreSQL" in str(raised.value)


def test_not_json_stays_a_type_error() -> None:
    with pytest.raises(TypeError):
        check_json({"a": object()}, "context")


def test_check_text() -> None:
    check_text("fine", "key")
    with pytest.raises(UnstorableValueError, match=r"^key holds a NUL"):
        check_text("a\x00", "key")


def test_storable_text_escapes_what_no_storage_keeps() -> None:
    assert storable_text("plain é") == "plain é"
    assert storable_text("a\x00b\ud800c") == "a\\x00b\\ud800c"
    check_text(storable_text("a\x00b\ud800c"), "message")
