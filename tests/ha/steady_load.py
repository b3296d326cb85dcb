"""A steady saga load for failure drills: sagas started at a fixed rate through the write pool,
in a thread of its own (so the drill can stop servers synchronously meanwhile), with every
step's side effect counted, to prove afterwards that no acknowledged saga was lost and no step
ran twice.

Each saga's id is chosen by the client before it starts, so the history (``LoadReport.history``)
names also the sagas whose run() failed: a checker can look for them after a fault, and
:func:`recover_in_flight` finishes those left unfinished, counting their effects in the same
counters (``LoadReport.steps``)."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import psycopg

from sagaz import Saga, SagaConfig, SagaStatus
from sagaz.config import DEFAULT_LEASE_SECONDS
from sagaz.engine.recovery import RecoveryReport, recover
from sagaz.storage.postgresql import PostgreSQLSagaStorage

STEPS = ("reserve", "charge", "ship")
SAGA_NAME = "drill"


@dataclass
class Op:
    """One client call, as the client saw it (perf_counter times)."""

    saga_id: str
    invoked: float
    returned: float | None = None
    status: SagaStatus | None = None
    """What run() said, None when it raised."""
    error: str | None = None


@dataclass
class Effects:
    """Every time a step's action or compensation actually ran, by (saga id, step)."""

    actions: Counter[tuple[str, str]] = field(default_factory=Counter)
    compensations: Counter[tuple[str, str]] = field(default_factory=Counter)


def drill_saga(config: SagaConfig, effects: Effects) -> Saga:
    """The load's saga: three steps whose actions and compensations only count themselves."""

    def step(name: str) -> Any:
        async def act(ctx: Any) -> None:
            effects.actions[(ctx.saga_id, name)] += 1
        return act

    def undo(name: str) -> Any:
        async def compensate(ctx: Any) -> None:
            effects.compensations[(ctx.saga_id, name)] += 1
        return compensate

    saga = Saga(name=SAGA_NAME, config=config)
    for name in STEPS:
        saga.add_step(name, step(name), undo(name))
    return saga


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
    history: list[Op] = field(default_factory=list)
    """Every call in the order it was started."""
    steps: Effects = field(default_factory=Effects)
    """What the steps' actions and compensations did, in the load and in any recovery after
    it (``effects`` is ``steps.actions``)."""

    def longest_gap(self, after: float = 0.0) -> float:
        """The longest time without any saga completing (from ``after``, a perf_counter time)."""
        times = sorted(t for t in self.completion_times if t >= after)
        return max((b - a for a, b in itertools.pairwise(times)), default=0.0)


@dataclass
class SteadyLoad:
    dsn: str
    rate: float = 200.0
    retry_timeout: float = 30.0
    netns: str | None = None
    """The network namespace the load's connections start from (tests/ha/netns.py)."""
    lease_seconds: float = DEFAULT_LEASE_SECONDS
    history: list[Op] = field(default_factory=list)
    """The calls so far (the load's thread appends; readers take a copy: ``list(...)``)."""
    _thread: threading.Thread | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _report: LoadReport | None = None

    def __enter__(self) -> SteadyLoad:
        def body() -> None:
            if self.netns is not None:
                from netns import enter
                enter(self.netns)
            asyncio.run(self._run())

        self._thread = threading.Thread(target=body, daemon=True)
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
        effects = Effects()
        completed: dict[str, SagaStatus] = {}
        errors: list[str] = []
        times: list[float] = []
        acknowledged: dict[str, float] = {}
        started: list[float] = []
        history = self.history
        saga = drill_saga(SagaConfig(storage=storage, lease_seconds=self.lease_seconds), effects)

        async def one() -> None:
            started.append(time.time())
            op = Op(str(uuid.uuid4()), time.perf_counter())
            history.append(op)
            try:
                result = await saga.execute({}, saga_id=op.saga_id)
                op.returned, op.status = time.perf_counter(), result.status
                completed[result.saga_id] = result.status
                acknowledged[result.saga_id] = time.time()
                times.append(op.returned)
            except Exception as exc:  # a drill counts failures instead of stopping at one
                op.returned, op.error = time.perf_counter(), f"{type(exc).__name__}: {exc}"
                errors.append(op.error)

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
        self._report = LoadReport(i, completed, errors, effects.actions, times,
                                  time.perf_counter() - start, acknowledged, started, history,
                                  effects)


def recover_in_flight(dsn: str, report: LoadReport, *, lease_seconds: float,
                      netns: str | None = None, timeout: float = 60.0) -> RecoveryReport:
    """Finish, as a worker's recovery would, every saga of ``report`` left unfinished by a
    fault: wait until their leases (``lease_seconds``, as the load used) expired, then recover
    through ``dsn``. The steps it runs count into ``report.steps``, next to the load's own."""
    outcome: list[RecoveryReport] = []
    failure: list[BaseException] = []

    async def run() -> None:
        storage = PostgreSQLSagaStorage(dsn, auto_migrate=False, retry_timeout=30.0)
        config = SagaConfig(storage=storage, lease_seconds=lease_seconds)
        try:
            await asyncio.sleep(lease_seconds + 0.5)
            outcome.append(await recover(config, sagas=[drill_saga(config, report.steps)]))
        finally:
            await storage.close()

    def body() -> None:
        try:
            if netns is not None:
                from netns import enter
                enter(netns)
            asyncio.run(run())
        except BaseException as exc:  # handed to the caller's thread
            failure.append(exc)

    thread = threading.Thread(target=body, daemon=True)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), f"recovery did not finish within {timeout} s"
    if failure:
        raise failure[0]
    return outcome[0]


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
