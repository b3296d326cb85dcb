"""One rule for every test that needs a real component of this machine (PostgreSQL binaries,
PgBouncer, pgBackRest, Prometheus, network namespaces): when it is missing the test FAILS, with
what to install, in CI and elsewhere alike, as the broker and PostgreSQL fixtures do. A skip
would let a machine without the component report green without having run the test."""

from __future__ import annotations

from typing import NoReturn

import pytest


def fail_missing(message: str) -> NoReturn:
    pytest.fail(message, pytrace=False)
