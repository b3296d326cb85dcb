"""A steady saga load for failure drills: sagas started at a fixed rate through the write pool,
in a thread of its own (so the drill can stop servers synchronously meanwhile), with every
step's side effect counted, to prove afterwards that no acknowledged saga was lost and no step
ran twice."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import psycopg

from sagaz import Saga, SagaConfig, SagaStatus
from sagaz.storage.postgresql import PostgreSQLSagaStorage

STEPS = ("reserve", "charge", "ship")


@dataclass
class LoadReport:
    started: int
    completed: dict[str, SagaStatus]
    """saga id -> final status, for every run() that returned."""
    errors: list[str]
    effects: Counter[tuple[str, str]]
    completion_times: list[float]
    elapsed: float
    acknowledged_at: dict[str, float] = field(default_factory=dict)
    """saga id -> wall-clock time (time.time()) its run() returned: point-in-time restores
    compare it with PostgreSQL's commit times."""
    started_at: list[float] = field(default_factory=list)
    """Wall-clock time each saga was started, in order."""

    def longest_gap(self, after: float = 0.0) -> float:
        """The longest time without any saga completing (from ``after``, a perf_counter time)."""
        times = sorted(t for t in self.completion_times if t >= after)
        return max((b - a for a, b in itertools.pairwise(times)), default=0.0)


@dataclass
class SteadyLoad:
    dsn: str
    rate: float = 200.0
    retry_timeout: float = 30.0
    _thread: threading.Thread | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _report: LoadReport | None = None

    def __enter__(self) -> SteadyLoad:
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(120)

    def stop(self) -> LoadReport:
        self.__exit__()
        assert self._report is not None, "the load thread did not finish"
        return self._report

    async def _run(self) -> None:
        storage = PostgreSQLSagaStorage(self.dsn, auto_migrate=False,
                                        retry_timeout=self.retry_timeout)
        effects: Counter[tuple[str, str]] = Counter()
        completed: dict[str, SagaStatus] = {}
        errors: list[str] = []
        times: list[float] = []
        acknowledged: dict[str, float] = {}
        started: list[float] = []

        def step(name: str) -> Any:
            async def act(ctx: Any) -> None:
                effects[(ctx.saga_id, name)] += 1
            return act

        saga = Saga(name="drill", config=SagaConfig(storage=storage))
        for name in STEPS:
            saga.add_step(name, step(name))

        async def one() -> None:
            started.append(time.time())
            try:
                result = await saga.execute({})
                completed[result.saga_id] = result.status
                acknowledged[result.saga_id] = time.time()
                times.append(time.perf_counter())
            except Exception as exc:  # a drill counts failures instead of stopping at one
                errors.append(f"{type(exc).__name__}: {exc}")

        tasks: list[asyncio.Task[None]] = []
        start = time.perf_counter()
        i = 0
        while not self._stop.is_set():
            due = start + i / self.rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one()))
            i += 1
        await asyncio.gather(*tasks)
        await storage.close()
        self._report = LoadReport(i, completed, errors, effects, times,
                                  time.perf_counter() - start, acknowledged, started)


def verify_on_primary(conninfo: str, report: LoadReport) -> None:
    """Every acknowledged saga is on the primary, COMPLETED, with its three steps; no step's
    effect happened twice."""
    assert report.completed, "the load completed no saga at all"
    assert set(report.completed.values()) == {SagaStatus.COMPLETED}
    ids = list(report.completed)
    with psycopg.connect(conninfo, autocommit=True, connect_timeout=5) as conn:
        found = dict(conn.execute(
            "SELECT saga_id::text, status FROM saga_executions WHERE saga_id = ANY(%s::uuid[])",
            (ids,)).fetchall())
        steps = conn.execute(
            "SELECT count(*) FROM saga_steps WHERE saga_id = ANY(%s::uuid[]) "
            "AND status = 'COMPLETED'", (ids,)).fetchone()
    missing = set(ids) - set(found)
    assert not missing, f"{len(missing)} acknowledged sagas are not on the primary"
    assert set(found.values()) == {"COMPLETED"}
    assert steps is not None and steps[0] == 3 * len(ids)
    twice = {k: n for k, n in report.effects.items() if n > 1}
    assert not twice, f"steps ran twice: {list(twice)[:5]}"
