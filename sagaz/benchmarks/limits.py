"""What the database itself can do, measured in the same run as sagaz, so every figure of the
report is also a ratio to it:

- the server's durable single-row commit rate: ``concurrency`` connections each committing
  one-row INSERTs as fast as the server acknowledges them (synchronous_commit as configured);
- a replay of the SQL the storage sends: the statements (write batches, lease renewals...) a
  saga run sent, recorded on the storage's own connections, then sent again as they were, in
  order, over as many connections as the storage keeps batches in flight. What is left between
  the saga rate and the replay rate is the engine and the driver, not the database;
- a connection per transaction: connect, one transaction, disconnect, the way a short-lived
  client (a serverless function, a CGI script) uses the database, direct and through PgBouncer.

Measurement tooling: it talks to psycopg directly, outside the storage gateway.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import psycopg

from sagaz.benchmarks.engine import closed_loop_rate
from sagaz.config import SagaConfig
from sagaz.engine.context import SagaContext
from sagaz.engine.definition import Saga
from sagaz.storage.postgresql import PostgreSQLSagaStorage

__all__ = [
    "ReplayResult", "connect_per_transaction_ms", "replay_storage_sql", "single_row_commit_rate",
]

Statement = tuple[Any, Any]  # (query as the storage passed it, its parameters)


async def single_row_commit_rate(dsn: str, concurrency: int, seconds: float) -> float:
    """Durable one-row commits per second over ``concurrency`` connections."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS bench_commit (n bigint, at timestamptz)")
    commits = 0
    deadline = time.perf_counter() + seconds

    async def committer() -> None:
        nonlocal commits
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            while time.perf_counter() < deadline:
                await conn.execute("INSERT INTO bench_commit VALUES (1, now())")
                commits += 1

    started = time.perf_counter()
    await asyncio.gather(*(committer() for _ in range(concurrency)))
    return commits / (time.perf_counter() - started)


class _RecordingCursor(psycopg.AsyncCursor[Any]):
    recorded: list[Statement]

    async def execute(self, query: Any, params: Any = None, **kwargs: Any) -> Any:
        self.recorded.append((query, params))
        return await super().execute(query, params, **kwargs)


class _RecordingStorage(PostgreSQLSagaStorage):
    """The PostgreSQL storage, unchanged, except that its connections record every statement."""

    def __init__(self, dsn: str, recorded: list[Statement]):
        super().__init__(dsn, auto_migrate=False)
        self._recorded = recorded

    async def _configure(self, conn: Any) -> None:
        await super()._configure(conn)
        recorded = self._recorded

        class Recording(_RecordingCursor):
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                super().__init__(*args, **kwargs)
                self.recorded = recorded

        conn.cursor_factory = Recording


async def _noop(ctx: SagaContext) -> None:
    return None


@dataclass
class ReplayResult:
    sagas: int
    saga_rate: float
    """Sagas/s of the recorded run (the storage, the engine and the driver)."""
    statements: int
    replay_rate: float
    """Sagas/s the same statements achieve sent raw: ``sagas`` / replay time."""


async def replay_storage_sql(
    record_dsn: str, replay_dsn: str, sagas: int, concurrency: int, steps: int = 3
) -> ReplayResult:
    """Run ``sagas`` sagas of ``steps`` no-op steps on ``record_dsn`` recording the storage's
    statements, then replay them on ``replay_dsn`` (a fresh database with the same schema)."""
    recorded: list[Statement] = []
    storage = _RecordingStorage(record_dsn, recorded)
    saga = Saga(name=f"bench-replay-{steps}", config=SagaConfig(storage=storage))
    for i in range(steps):
        saga.add_step(f"s{i}", _noop)
    try:
        await saga.run({})
        recorded.clear()  # the warm-up saga and the pool's opening are not part of the run
        saga_rate = await closed_loop_rate(saga, sagas, concurrency)
        ran = max(1, sagas // concurrency) * concurrency
    finally:
        await storage.close()
    statements = list(recorded)
    queue: asyncio.Queue[Statement] = asyncio.Queue()
    for statement in statements:
        queue.put_nowait(statement)

    async def sender() -> None:
        async with await psycopg.AsyncConnection.connect(replay_dsn, autocommit=True) as conn:
            while not queue.empty():
                query, params = queue.get_nowait()
                await conn.execute(query, params)

    started = time.perf_counter()
    # As many connections as the storage keeps write batches in flight (max_inflight).
    await asyncio.gather(*(sender() for _ in range(storage.max_inflight)))
    replay_seconds = time.perf_counter() - started
    return ReplayResult(ran, saga_rate, len(statements), ran / replay_seconds)


def connect_per_transaction_ms(dsn: str, transactions: int) -> float:
    """Median milliseconds of connect + one transaction (a one-row INSERT) + disconnect."""
    with psycopg.connect(dsn, autocommit=True, prepare_threshold=None) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS bench_connect (n bigint)")
    timings = []
    for _ in range(transactions):
        started = time.perf_counter()
        with psycopg.connect(dsn, prepare_threshold=None) as conn:
            conn.execute("INSERT INTO bench_connect VALUES (1)")
            conn.commit()
        timings.append((time.perf_counter() - started) * 1000)
    timings.sort()
    return timings[len(timings) // 2]
