"""`sagaz outbox` and the relay of `sagaz worker`, as subprocesses on a fresh PostgreSQL
database per test."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import psycopg
from pg_fixtures import as_url
from test_db_cli import assert_clean_error, cli, ok

SAGA_MODULE = '''
from sagaz import Saga

async def reserve(ctx):
    ctx.emit("OrderReserved", {"order": ctx["order"]}, key=ctx["order"])

order = Saga(name="outbox-cli-order")
order.add_step("reserve", reserve)
'''


def test_worker_once_relays_the_events_a_saga_emitted(pg_dsn: str, tmp_path: Path) -> None:
    (tmp_path / "shop.py").write_text(SAGA_MODULE)
    url = as_url(pg_dsn)
    ok(cli(tmp_path, "run", "shop:order", "--ctx", '{"order": "A1"}', SAGAZ_STORAGE_URL=url))
    status = ok(cli(tmp_path, "outbox", "status", SAGAZ_STORAGE_URL=url))
    assert "PENDING" in status
    out = ok(cli(tmp_path, "worker", "--once", "--import", "shop", SAGAZ_STORAGE_URL=url,
                 SAGAZ_BROKER_URL="memory://", SAGAZ_DATABASE_URL=url))
    assert "relayed 2 event(s)" in out  # OrderReserved and SagaCompleted
    with psycopg.connect(pg_dsn) as conn:
        rows = conn.execute("SELECT event_type, status FROM saga_outbox ORDER BY seq").fetchall()
    assert rows == [("OrderReserved", "SENT"), ("SagaCompleted", "SENT")]


def test_dead_letters_list_retry_purge(pg_dsn: str, tmp_path: Path) -> None:
    url = as_url(pg_dsn)
    ok(cli(tmp_path, "db", "migrate", "--dsn", url))
    dead = [str(uuid.uuid4()) for _ in range(3)]
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        for i, event_id in enumerate(dead):
            conn.execute(
                "INSERT INTO saga_outbox (event_id, event_type, status, attempts, last_error) "
                "VALUES (%s, %s, 'DEAD_LETTER', 10, 'broker said no')", (event_id, f"Bad{i}"))
    listing = ok(cli(tmp_path, "outbox", "dlq", "list", SAGAZ_STORAGE_URL=url))
    assert all(event_id in listing for event_id in dead) and "broker said no" in listing
    assert "1 dead letter(s) sent back" in ok(
        cli(tmp_path, "outbox", "dlq", "retry", dead[0], SAGAZ_STORAGE_URL=url))
    assert_clean_error(cli(tmp_path, "outbox", "dlq", "purge", SAGAZ_STORAGE_URL=url), 2, "--yes")
    assert_clean_error(cli(tmp_path, "outbox", "dlq", "retry", "not-a-uuid",
                           SAGAZ_STORAGE_URL=url), 2, "not an event id")
    assert "2 dead letter(s) deleted" in ok(
        cli(tmp_path, "outbox", "dlq", "purge", "--yes", SAGAZ_STORAGE_URL=url))
    with psycopg.connect(pg_dsn) as conn:
        assert conn.execute("SELECT status FROM saga_outbox").fetchall() == [("PENDING",)]


def test_the_outbox_needs_a_storage_that_keeps_one(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "sagaz", "outbox", "status"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=60,
                            env={"PATH": "/usr/bin:/bin", "SAGAZ_STORAGE_URL": "memory://"})
    assert result.returncode == 2 and "keeps no outbox" in result.stderr
    assert "sqlite:///" in result.stderr and "postgresql://" in result.stderr
