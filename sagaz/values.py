"""What a storage can keep: the one set of value rules every storage enforces.

Contexts, step results and event payloads are persisted as JSON. JSON itself allows two kinds of
string that PostgreSQL refuses: the NUL character (``jsonb`` and ``text`` cannot hold U+0000) and
surrogate code points (U+D800-U+DFFF, which are not characters and have no UTF-8 form). SQLite
and the in-memory storage would keep them, so a saga developed on SQLite would break only in
production. Every storage applies these rules instead, before the commit, and the engine turns a
refused value into a failure of the step that produced it.

Nothing here imports the rest of sagaz: values sit at the bottom.
"""

from __future__ import annotations

import json
import re
from typing import Any

__all__ = ["UnstorableValueError", "check_json", "check_text", "storable_text"]

# In JSON produced with ensure_ascii=False a NUL is always written as the escape \u0000 while a
# surrogate stays a raw code point (and pure ASCII text has none). A hit is only a suspect:
# "\\u0000" in a value (an escaped backslash, then "u0000") matches too, so the exact place is
# confirmed by walking the value. Two plain scans: a regex alternation costs twice as much.
_SURROGATE = re.compile("[\ud800-\udfff]")
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


class UnstorableValueError(ValueError):
    """A value holds a string no storage may keep (a NUL character or a surrogate)."""


def check_json(value: Any, what: str) -> str:
    """``value`` as JSON text, if it is JSON and every string in it (keys too) is storable.

    Raises :class:`TypeError`/:class:`ValueError` as :func:`json.dumps` does for what is not JSON,
    and :class:`UnstorableValueError` naming the first offending place, e.g.
    ``result['note'][2]``, for a NUL character or a surrogate."""
    text = json.dumps(value, allow_nan=False, ensure_ascii=False)
    if "\\u0000" in text or (not text.isascii() and _SURROGATE.search(text) is not None):
        _walk(value, what)
    return text


def check_text(value: str, what: str) -> None:
    """Raise :class:`UnstorableValueError` if the string ``value`` holds a NUL or a surrogate."""
    found = _UNSTORABLE.search(value)
    if found is not None:
        raise UnstorableValueError(_message(what, found.group()))


def storable_text(text: str) -> str:
    """``text`` with NUL characters and surrogates written as backslash escapes: for messages
    sagaz itself stores (a step's error), which must never be what makes a commit fail."""
    if _UNSTORABLE.search(text) is None:
        return text
    return text.replace("\x00", "\\x00").encode("utf-8", "backslashreplace").decode("utf-8")


def _walk(value: Any, path: str) -> None:
    if isinstance(value, str):
        check_text(value, path)
    elif isinstance(value, dict):
        for key, item in value.items():
            if isinstance(key, str):
                check_text(key, f"a key of {path}")
            _walk(item, f"{path}[{key!r}]")
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            _walk(item, f"{path}[{index}]")


def _message(what: str, char: str) -> str:
    kind = "a NUL character (\\x00)" if char == "\x00" else (
        f"a lone surrogate (\\u{ord(char):04x}, not a character: text decoded with "
        "errors='surrogateescape' or a broken UTF-16 pair)")
    return (f"{what} holds {kind}, which no sagaz storage keeps (PostgreSQL refuses it); remove "
            "it, or store binary data encoded, e.g. as base64")
