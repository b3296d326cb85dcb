"""A scraper that hangs up mid-answer is no error of the server: no traceback on stderr."""

from __future__ import annotations

import logging

import pytest

from sagaz.observability.server import _QuietServer


class _Handler:
    def __init__(self, *args: object) -> None:
        pass


def _fail_with(server: _QuietServer, exc: BaseException) -> None:
    try:
        raise exc
    except BaseException:
        server.handle_error(None, ("127.0.0.1", 1))


def test_client_gone_is_logged_at_debug_only(
        capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> None:
    server = _QuietServer(("127.0.0.1", 0), _Handler)  # type: ignore[arg-type]
    try:
        with caplog.at_level(logging.DEBUG, logger="sagaz.observability.server"):
            _fail_with(server, BrokenPipeError(32, "Broken pipe"))
            _fail_with(server, ConnectionResetError(104, "Connection reset by peer"))
            _fail_with(server, ValueError("a real bug"))
    finally:
        server.server_close()
    assert capsys.readouterr().err == ""
    levels = [(r.levelno, getattr(r, "action", None)) for r in caplog.records]
    gone = (logging.DEBUG, "metrics_client_gone")
    assert levels == [gone, gone, (logging.WARNING, "metrics_request_failed")]
