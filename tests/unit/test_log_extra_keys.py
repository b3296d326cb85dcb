"""No log call of sagaz passes an ``extra`` key that names a LogRecord attribute: logging raises
``KeyError: "Attempt to overwrite 'created' in LogRecord"`` for such a call, but only when its
level is enabled, so a collision hides until someone runs at that level (the worker's maintenance
died that way at ``--log-level info``). Checked statically over every ``extra=`` of the package;
tests/acceptance/test_log_levels.py runs the commands at every level."""

from __future__ import annotations

import ast
import logging
from pathlib import Path

import sagaz

PACKAGE = Path(sagaz.__file__).resolve().parent

# What Logger.makeRecord refuses: the record's own attributes, plus "message" and "asctime".
RESERVED = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


def _extra_keys() -> tuple[list[tuple[str, str]], list[str]]:
    """(location, key) of every literal ``extra=`` key, and the locations of ``extra=`` values
    this test cannot read (not a dict literal with string keys)."""
    keys: list[tuple[str, str]] = []
    unreadable: list[str] = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            for keyword in node.keywords:
                if keyword.arg != "extra":
                    continue
                where = f"{path.relative_to(PACKAGE.parent)}:{keyword.value.lineno}"
                value = keyword.value
                if not isinstance(value, ast.Dict) or not all(
                        isinstance(k, ast.Constant) and isinstance(k.value, str)
                        for k in value.keys):
                    unreadable.append(where)
                    continue
                keys += [(where, str(k.value)) for k in value.keys
                         if isinstance(k, ast.Constant)]
    return keys, unreadable


def test_no_extra_key_collides_with_a_log_record_attribute() -> None:
    keys, unreadable = _extra_keys()
    assert len(keys) > 50, "the walk found too few log calls: is the package path right?"
    collisions = [f"{where}: {key!r}" for where, key in keys if key in RESERVED]
    assert not collisions, (
        "extra keys that logging refuses (rename them, e.g. with a prefix): "
        + ", ".join(collisions))
    assert not unreadable, (
        "extra= must be a dict literal with string keys, so this test can check it: "
        + ", ".join(unreadable))


def test_the_reserved_names_are_the_ones_logging_refuses() -> None:
    logger = logging.getLogger("sagaz.test.reserved")
    for name in ("created", "name", "message", "asctime", "process", "msg"):
        assert name in RESERVED
        try:
            logger.makeRecord(logger.name, logging.INFO, __file__, 1, "m", None, None,
                              extra={name: 1})
        except KeyError:
            continue
        raise AssertionError(f"logging accepted extra key {name!r}")
