"""Rendering the jinja2 templates of ``sagaz/deploy/templates``."""

from __future__ import annotations

from functools import cache
from typing import Any

import jinja2

__all__ = ["render"]


@cache
def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.PackageLoader("sagaz.deploy", "templates"),
        undefined=jinja2.StrictUndefined,  # a missing value is a bug, never an empty string
        keep_trailing_newline=True,
        autoescape=False,  # config files and SQL, not HTML
    )


def render(template: str, **values: Any) -> str:
    """The text of ``template`` (a path under templates/, e.g. ``pgbouncer/pgbouncer.ini.j2``)."""
    return _environment().get_template(template).render(**values)
