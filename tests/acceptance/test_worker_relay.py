"""`sagaz worker` and its outbox relay on the embedded SQLite storage, as subprocesses: events a
saga emitted reach SAGAZ_BROKER_URL, SENT rows past their retention are deleted; and with the
broker down (a broker URL on a closed loopback port, or a port that accepts and never answers)
``--once`` returns within its deadline with exit 1 and one line, while the loop mode keeps
retrying and says so once."""

from __future__ import annotations

import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pg_fixtures import as_url
from test_db_cli import _env, cli, ok

SAGA_MODULE = '''
from sagaz import Saga

async def reserve(ctx):
    ctx.emit("OrderReserved", {"order": ctx["order"]}, key=ctx["order"])

order = Saga(name="relay-cli-order")
order.add_step("reserve", reserve)
'''

SCHEMES = {"rabbitmq": "amqp://guest:guest@127.0.0.1:{port}/", "redis": "redis://127.0.0.1:{port}/0",
           "nats": "nats://127.0.0.1:{port}"}


def _rows(db: Path) -> list[tuple[str, str, int]]:
    with sqlite3.connect(db) as conn:
        return conn.execute(
            "SELECT event_type, status, attempts FROM saga_outbox ORDER BY rowid").fetchall()


def _run_saga(tmp_path: Path, order: str = "A1", **env: str) -> None:
    (tmp_path / "shop.py").write_text(SAGA_MODULE)
    ok(cli(tmp_path, "run", "shop:order", "--ctx", f'{{"order": "{order}"}}',
           PYTHONPATH=str(tmp_path), **env))


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts connections and never says a word (a hung broker)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield int(server.getsockname()[1])
    stop.set()
    thread.join(5)
    for conn in accepted:
        conn.close()
    server.close()


def test_worker_once_relays_the_events_of_a_sqlite_saga(tmp_path: Path) -> None:
    _run_saga(tmp_path)
    db = tmp_path / "sagaz.db"
    assert [r[1] for r in _rows(db)] == ["PENDING", "PENDING"]
    assert "PENDING" in ok(cli(tmp_path, "outbox", "status"))
    out = ok(cli(tmp_path, "worker", "--once", SAGAZ_BROKER_URL="memory://"))
    assert "relayed 2 event(s)" in out  # OrderReserved and SagaCompleted
    assert _rows(db) == [("OrderReserved", "SENT", 0), ("SagaCompleted", "SENT", 0)]


def test_a_running_worker_relays_what_sagas_commit_meanwhile(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "sagaz", "worker", "--interval", "0.2"], cwd=tmp_path,
        env=_env(SAGAZ_BROKER_URL="memory://"), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(1.5)
        assert proc.poll() is None, proc.communicate()
        _run_saga(tmp_path)
        deadline = time.monotonic() + 15
        while {r[1] for r in _rows(tmp_path / "sagaz.db")} != {"SENT"}:
            assert time.monotonic() < deadline, _rows(tmp_path / "sagaz.db")
            time.sleep(0.1)
        proc.terminate()
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert "outbox relay on (SENT events kept 30 days)" in out
    assert "Traceback" not in err


def test_sent_events_past_their_retention_are_deleted(tmp_path: Path) -> None:
    _run_saga(tmp_path, "A1")
    db = tmp_path / "sagaz.db"
    ok(cli(tmp_path, "worker", "--once", SAGAZ_BROKER_URL="memory://"))
    with sqlite3.connect(db) as conn:  # these two were sent 40 days ago
        conn.execute("UPDATE saga_outbox SET sent_at = sent_at - 40 * 86400")
        conn.execute("INSERT INTO saga_outbox (event_id, event_type, payload, status, attempts, "
                     "next_attempt_at, created_at) VALUES ('d1', 'Dead', '{}', 'DEAD_LETTER', "
                     "10, 0, 0)")
    _run_saga(tmp_path, "B2")
    out = ok(cli(tmp_path, "worker", "--once", SAGAZ_BROKER_URL="memory://"))
    assert "2 SENT event(s) older than 30 day(s) deleted" in out
    assert _rows(db) == [("Dead", "DEAD_LETTER", 10), ("OrderReserved", "SENT", 0),
                         ("SagaCompleted", "SENT", 0)]
    ok(cli(tmp_path, "worker", "--once", "--outbox-retention-days", "0",
           SAGAZ_BROKER_URL="memory://"))
    assert _rows(db) == [("Dead", "DEAD_LETTER", 10)], "dead letters wait for dlq purge"


@pytest.mark.parametrize("broker", sorted(SCHEMES))
def test_once_with_the_broker_down_exits_1_with_one_line(tmp_path: Path, broker: str) -> None:
    _run_saga(tmp_path)
    url = SCHEMES[broker].format(port=_closed_port())
    started = time.monotonic()
    result = cli(tmp_path, "worker", "--once", SAGAZ_BROKER_URL=url)
    assert time.monotonic() - started < 20
    assert result.returncode == 1, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        "error: the outbox relay cannot reach the broker"), result.stderr
    assert "guest:guest" not in result.stderr
    assert [r[1:] for r in _rows(tmp_path / "sagaz.db")] == [("PENDING", 0)] * 2


@pytest.mark.parametrize("broker", sorted(SCHEMES))
def test_once_on_postgresql_with_the_broker_down_exits_1_with_one_line(
    tmp_path: Path, broker: str, pg_dsn: str
) -> None:
    on_pg = {"SAGAZ_STORAGE_URL": as_url(pg_dsn)}
    _run_saga(tmp_path, **on_pg)
    result = cli(tmp_path, "worker", "--once", "--maintenance-interval", "0",
                 SAGAZ_BROKER_URL=SCHEMES[broker].format(port=_closed_port()), **on_pg)
    assert result.returncode == 1, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        "error: the outbox relay cannot reach the broker"), result.stderr


@pytest.mark.parametrize("broker", sorted(SCHEMES))
def test_once_with_a_hung_broker_returns_at_its_deadline(
    tmp_path: Path, broker: str, silent_port: int
) -> None:
    _run_saga(tmp_path)
    started = time.monotonic()
    result = cli(tmp_path, "worker", "--once", "--relay-timeout", "2",
                 SAGAZ_BROKER_URL=SCHEMES[broker].format(port=silent_port))
    elapsed = time.monotonic() - started
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert 2 <= elapsed < 12, elapsed
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "did not finish within 2s" in lines[0], result.stderr


@pytest.mark.parametrize("broker", sorted(SCHEMES))
def test_the_loop_keeps_retrying_and_says_so_once(tmp_path: Path, broker: str) -> None:
    _run_saga(tmp_path)
    proc = subprocess.Popen(
        [sys.executable, "-m", "sagaz", "worker", "--interval", "0.2"], cwd=tmp_path,
        env=_env(SAGAZ_BROKER_URL=SCHEMES[broker].format(port=_closed_port())),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(6)  # several relay retries (backoff 0.1 s doubling)
        assert proc.poll() is None, proc.communicate()
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    said = [line for line in err.splitlines() if "broker unavailable" in line]
    assert len(said) == 1 and "keeps retrying with backoff" in said[0], err
    assert len(err.strip().splitlines()) == 1, err
    assert [r[1:] for r in _rows(tmp_path / "sagaz.db")] == [("PENDING", 0)] * 2
