"""The metric names a PromQL expression reads: what the dashboard checks compare with the live
``/metrics`` output. A lexer of PromQL's tokens (strings, numbers, durations, label matchers,
the label lists of ``by``/``without``/``on``/``ignoring``/``group_*``); the syntax itself is
checked by promtool, which has no command that prints the names."""

from __future__ import annotations

import re

__all__ = ["metric_names"]

_TOKEN = re.compile(r"""
    (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
  | (?P<braces>\{[^}]*\})
  | (?P<range>\[[^\]]*\])
  | (?P<number>(?:0x[0-9a-fA-F]+|[0-9]+(?:\.[0-9]*)?(?:e[+-]?[0-9]+)?)(?:ms|s|m|h|d|w|y)?)
  | (?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)
  | (?P<other>\S)
""", re.VERBOSE)

_KEYWORDS = {"and", "or", "unless", "bool", "offset", "atan2", "inf", "nan"}
_LABEL_LISTS = {"by", "without", "on", "ignoring", "group_left", "group_right"}
# May be followed by ``by (...)`` before their parenthesis: ``sum by (pool) (x)``.
_AGGREGATIONS = {"sum", "min", "max", "avg", "group", "stddev", "stdvar", "count",
                 "count_values", "bottomk", "topk", "quantile"}


def metric_names(expr: str) -> set[str]:
    """The metric names of the vector selectors in ``expr`` (functions, aggregations, keywords
    and label names left out)."""
    tokens = [(m.lastgroup, m.group()) for m in _TOKEN.finditer(expr)]
    names: set[str] = set()
    i = 0
    while i < len(tokens):
        kind, text = tokens[i]
        following = tokens[i + 1][1] if i + 1 < len(tokens) else ""
        if kind == "name" and text.lower() in _LABEL_LISTS:
            i += 1
            if i < len(tokens) and tokens[i][1] == "(":
                while i < len(tokens) and tokens[i][1] != ")":
                    i += 1
        elif kind == "name" and (following == "(" or text in _AGGREGATIONS):
            pass  # a function or an aggregation
        elif kind == "name" and text.lower() not in _KEYWORDS:
            names.add(text)
        elif kind == "braces" and "__name__" in text:
            found = re.search(r"""__name__\s*=\s*["']([a-zA-Z_:][a-zA-Z0-9_:]*)["']""", text)
            if found:
                names.add(found[1])
        i += 1
    return names
