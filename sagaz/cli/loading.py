"""Finding user code: ``module:attribute`` references to sagas and ``--import`` modules.

Every failure here is the user's to fix (a typo, a missing directory on the path, a bug in their
module), so it becomes one :class:`CliError` line that says what to change, never a traceback;
``--log-level DEBUG`` logs the traceback for the import-time bugs.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from collections.abc import Iterable
from types import ModuleType
from typing import Any

from sagaz.engine.definition import Saga
from sagaz.errors import SagaDefinitionError

from .common import fail

__all__ = ["import_module", "load_saga", "parse_spec", "split_module_names"]

logger = logging.getLogger(__name__)

_SPEC_FORM = "MODULE:ATTRIBUTE, e.g. myapp.sagas:order_saga"


def parse_spec(spec: str) -> tuple[str, str]:
    """Split ``module:attr`` (attr may be dotted: ``module:Class.attr``)."""
    module, sep, attr = spec.strip().partition(":")
    if not sep or not module or not attr:
        fail(f"{spec!r} is not a saga reference; write {_SPEC_FORM} "
             "(the attribute is a sagaz.Saga instance or a Saga subclass)")
    for part in (*module.split("."), *attr.split(".")):
        if not part.isidentifier():
            fail(f"{spec!r} is not a saga reference: {part!r} is not a Python name; write "
                 f"{_SPEC_FORM}")
    return module, attr


def _cwd_on_path() -> None:
    # A console script's sys.path starts with its bin directory, not the cwd; users expect
    # `sagaz run app:saga` to find ./app.py like `python -m` would.
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)


def import_module(name: str) -> ModuleType:
    """Import ``name`` (the cwd is on the path) or fail with a message that says why."""
    if not all(part.isidentifier() for part in name.split(".")):
        fail(f"{name!r} is not a module name; write a dotted Python module name such as "
             "myapp.sagas (not a file path)")
    _cwd_on_path()
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        logger.debug("import of %s failed", name, exc_info=True,
                     extra={"action": "cli_import_failed"})
        missing = exc.name or ""
        if name == missing or name.startswith(missing + "."):
            fail(f"cannot import module {name!r} ({exc}); run sagaz from the directory that "
                 "contains it, or add that directory to PYTHONPATH")
        fail(f"importing module {name!r} failed: it imports {missing!r}, which is not "
             "installed; install it in this environment")
    except Exception as exc:
        logger.debug("import of %s failed", name, exc_info=True,
                     extra={"action": "cli_import_failed"})
        fail(f"importing module {name!r} failed: {type(exc).__name__}: {exc}; fix that module "
             "(--log-level DEBUG shows the traceback)")


def split_module_names(values: Iterable[str]) -> list[str]:
    """``--import a --import b,c`` and ``SAGAZ_WORKER_IMPORTS="a b,c"`` both give [a, b, c]."""
    names: list[str] = []
    for value in values:
        for chunk in value.replace(",", " ").split():
            if chunk not in names:
                names.append(chunk)
    return names


def _is_saga(obj: object) -> bool:
    return isinstance(obj, Saga) or (
        isinstance(obj, type) and issubclass(obj, Saga) and obj is not Saga)


def load_saga(spec: str) -> Saga:
    """The saga ``module:attr`` names: an instance as is, a subclass built with no arguments."""
    module_name, attr_path = parse_spec(spec)
    module = import_module(module_name)
    obj: Any = module
    for part in attr_path.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            found = sorted(n for n, v in vars(module).items() if _is_saga(v))
            hint = (f"; sagas defined there: {', '.join(found)}" if found
                    else "; it defines no sagas at module level")
            fail(f"module {module_name!r} has no attribute {attr_path!r}{hint}")
    if isinstance(obj, Saga):
        return obj
    if isinstance(obj, type) and issubclass(obj, Saga):
        try:
            return obj()
        except SagaDefinitionError as exc:
            fail(f"cannot build saga {spec!r}: {exc}")
        except TypeError as exc:
            fail(f"{spec!r} is a Saga subclass that cannot be built without arguments ({exc}); "
                 f"point at an instance instead, e.g. order = {obj.__name__}(...) in "
                 f"{module_name}")
    fail(f"{spec!r} is a {type(obj).__name__}, not a saga; point at a sagaz.Saga instance or a "
         "Saga subclass")
