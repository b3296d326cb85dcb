"""The SQLite storage against real files, several storage objects and several processes."""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

import sagaz
from sagaz import Saga, SagaContext, SagaStatus, StepStatus
from sagaz.engine.types import SagaState, StepState
from sagaz.storage import sqlite as sqlite_module
from sagaz.storage.base import UnitOfWork
from sagaz.storage.sqlite import SQLiteSagaStorage

CHILD = Path(__file__).with_name("storage_child.py")
CHILD_DEADLINE = 10.0
EXPIRED = -1.0
"""A lease length that makes the lease already expired: no need to sleep until it runs out."""
LEASE = 60.0


def new_state(
    owner: str = "owner-1", status: SagaStatus = SagaStatus.RUNNING, **context: Any
) -> SagaState:
    return SagaState(str(uuid.uuid4()), "storage-test", status, dict(context), lease_owner=owner)


def query(db: Path, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    """Look at the file directly, bypassing the storage under test."""
    conn = sqlite3.connect(db)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


@pytest.fixture
async def storage(tmp_path: Path) -> AsyncIterator[SQLiteSagaStorage]:
    """A writable storage on a fresh file."""
    store = SQLiteSagaStorage(tmp_path / "sagas.db")
    yield store
    await store.close()


def run_together(barrier: Path, argv_list: list[list[str]]) -> list[Any]:
    """Start one child per argv, release them all at the same moment, return their JSON output."""
    barrier.mkdir()
    children = [subprocess.Popen([sys.executable, str(CHILD), *argv], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True) for argv in argv_list]
    try:
        deadline = time.monotonic() + CHILD_DEADLINE
        while len(list(barrier.glob("ready-*"))) < len(children):
            failed = [c for c in children if c.poll() is not None]
            assert not failed, failed[0].communicate()[1]
            assert time.monotonic() < deadline, "children did not get ready in time"
            time.sleep(0.005)
        (barrier / "go").touch()
        outputs = [child.communicate(timeout=CHILD_DEADLINE) for child in children]
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait()
    for child, (_, stderr) in zip(children, outputs, strict=True):
        assert child.returncode == 0, stderr
    return [json.loads(stdout) for stdout, _ in outputs]


# -- migrations ---------------------------------------------------------------------------------


MIGRATIONS = [(1, "initial"), (2, "outbox"), (3, "outbox_relay"), (4, "audit_log"),
              (5, "definition_versions"), (6, "durable_waits")]


async def test_migrations_are_applied_once_and_reopening_is_idempotent(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The first open applies migration 1 and records it in sagaz_migrations; opening the same
    file again applies nothing and leaves the schema and the data as they were."""
    db = tmp_path / "sagas.db"
    caplog.set_level(logging.INFO, logger="sagaz.storage.sqlite")
    first = SQLiteSagaStorage(db)
    state = new_state()
    await first.create(state, LEASE)
    await first.close()
    assert query(db, "SELECT version, name FROM sagaz_migrations") == MIGRATIONS
    schema = query(db, "SELECT type, name, sql FROM sqlite_master ORDER BY name")
    applied = [r for r in caplog.records if getattr(r, "action", None) == "migration_applied"]
    assert len(applied) == len(MIGRATIONS)

    caplog.clear()
    for _ in range(2):
        again = SQLiteSagaStorage(db)
        assert await again.load(state.saga_id) is not None
        await again.close()
    assert [r for r in caplog.records if getattr(r, "action", None) == "migration_applied"] == []
    assert query(db, "SELECT version, name FROM sagaz_migrations") == MIGRATIONS
    assert query(db, "SELECT type, name, sql FROM sqlite_master ORDER BY name") == schema


@pytest.mark.parametrize("attempt", range(3))
def test_processes_opening_one_fresh_file_at_once_all_succeed(tmp_path: Path, attempt: int) -> None:
    """Four processes that open (switch to WAL and migrate) the same new file at the same moment
    all succeed, and the migration is recorded once. (Repeated: the race is not hit every time.)"""
    db, barrier = tmp_path / "sagas.db", tmp_path / "barrier"
    outputs = run_together(barrier, [["open", str(db), str(barrier)]] * 4)
    assert outputs == [{"created": True}] * 4
    assert query(db, "SELECT version FROM sagaz_migrations") == [(v,) for v, _ in MIGRATIONS]
    assert query(db, "SELECT count(*) FROM saga_executions") == [(4,)]


async def test_opening_a_fresh_file_waits_for_a_writer_holding_its_lock(tmp_path: Path) -> None:
    """The deterministic form of the race above: while another connection holds the write lock
    of a fresh (not yet WAL) file, opening the storage waits up to busy_timeout for the lock,
    like every other statement, instead of failing at once with "database is locked"."""
    db = tmp_path / "sagas.db"
    writer = sqlite3.connect(db, isolation_level=None)
    writer.execute("CREATE TABLE unrelated (x INTEGER)")
    writer.execute("BEGIN IMMEDIATE")
    asyncio.get_running_loop().call_later(0.1, writer.execute, "COMMIT")
    storage = SQLiteSagaStorage(db, busy_timeout=10)
    try:
        assert await storage.count_by_status() == {}
    finally:
        await storage.close()
        writer.close()


# -- create, fencing ----------------------------------------------------------------------------


async def test_create_is_idempotent_on_the_saga_id(storage: SQLiteSagaStorage) -> None:
    """Creating a saga id that exists returns the stored saga and created=False, also when the
    creates race; the first creator keeps its context and its lease."""
    state = new_state("first", order=1)
    stored, created = await storage.create(state, LEASE)
    assert created
    assert (stored.context, stored.lease_owner) == ({"order": 1}, "first")

    again = SagaState(state.saga_id, "storage-test", SagaStatus.RUNNING, {"order": 2},
                      lease_owner="second")
    stored, created = await storage.create(again, LEASE)
    assert not created
    assert (stored.context, stored.lease_owner) == ({"order": 1}, "first")

    racing = new_state("racer")
    outcomes = await asyncio.gather(*(storage.create(racing, LEASE) for _ in range(10)))
    assert [created for _, created in outcomes].count(True) == 1
    assert query(storage.path, "SELECT count(*) FROM saga_executions") == [(2,)]


async def test_commit_by_a_non_owner_is_fenced(storage: SQLiteSagaStorage) -> None:
    """Only the lease holder may write: a commit by anyone else raises LeaseLostError and changes
    nothing; renewing someone else's lease reports it lost."""
    state = new_state("owner-1")
    await storage.create(state, LEASE)
    before = await storage.load(state.saga_id)

    intruder = UnitOfWork(state.saga_id, "owner-2", status=SagaStatus.COMPLETED,
                          context={"stolen": True},
                          steps=[StepState("a", StepStatus.COMPLETED, {"x": 1})])
    with pytest.raises(sagaz.LeaseLostError) as caught:
        await storage.commit(intruder, LEASE)
    assert caught.value.saga_id == state.saga_id
    assert await storage.load(state.saga_id) == before
    assert await storage.renew_leases("owner-2", [state.saga_id], LEASE) == [state.saga_id]

    with pytest.raises(sagaz.SagaNotFoundError):
        await storage.commit(UnitOfWork(str(uuid.uuid4()), "owner-1"), LEASE)

    await storage.commit(UnitOfWork(state.saga_id, "owner-1", context={"ok": True}), LEASE)
    after = await storage.load(state.saga_id)
    assert after is not None
    assert (after.context, after.version) == ({"ok": True}, before.version + 1)


# -- claiming expired leases --------------------------------------------------------------------


async def test_claim_expired_takes_only_unfinished_sagas_whose_lease_expired(
    storage: SQLiteSagaStorage,
) -> None:
    """Recovery claims RUNNING, PENDING and COMPENSATING sagas whose lease ran out; never a live
    lease and never a final saga. The claim fences out the previous owner."""
    async def make(status: SagaStatus, lease: float, *, release: bool = False) -> str:
        state = new_state("dead", SagaStatus.PENDING if status is SagaStatus.PENDING
                          else SagaStatus.RUNNING)
        await storage.create(state, lease)
        if status not in (SagaStatus.PENDING, SagaStatus.RUNNING):
            await storage.commit(UnitOfWork(state.saga_id, "dead", status=status,
                                            release_lease=release), lease)
        return state.saga_id

    expired = {
        await make(SagaStatus.RUNNING, EXPIRED),
        await make(SagaStatus.PENDING, EXPIRED),
        await make(SagaStatus.COMPENSATING, EXPIRED),
    }
    live = await make(SagaStatus.RUNNING, LEASE)
    not_claimable = [
        live,
        await make(SagaStatus.COMPLETED, EXPIRED, release=True),
        await make(SagaStatus.COMPENSATED, EXPIRED),  # final even though its lease expired
        await make(SagaStatus.FAILED, EXPIRED),
    ]
    before = {sid: await storage.load(sid) for sid in not_claimable}

    claimed = await storage.claim_expired("recoverer", LEASE, limit=100)
    assert sorted(claimed) == sorted(expired)
    assert await storage.claim_expired("recoverer-2", LEASE, limit=100) == []
    now = time.time()
    for saga_id in expired:
        state = await storage.load(saga_id)
        assert state is not None
        assert state.lease_owner == "recoverer"
        assert state.lease_expires_at is not None
        assert state.lease_expires_at > now
    assert {sid: await storage.load(sid) for sid in not_claimable} == before

    some = next(iter(expired))
    with pytest.raises(sagaz.LeaseLostError):
        await storage.commit(UnitOfWork(some, "dead", status=SagaStatus.COMPLETED), LEASE)
    await storage.commit(UnitOfWork(some, "recoverer", status=SagaStatus.COMPENSATED,
                                    release_lease=True), LEASE)


async def test_claim_expired_respects_its_limit(storage: SQLiteSagaStorage) -> None:
    """A claim takes at most ``limit`` sagas; repeated claims take the rest."""
    for _ in range(5):
        await storage.create(new_state("dead"), EXPIRED)
    batches = [await storage.claim_expired("r", LEASE, limit=2) for _ in range(4)]
    assert [len(b) for b in batches] == [2, 2, 1, 0]
    assert len({sid for batch in batches for sid in batch}) == 5


async def test_two_storages_claiming_concurrently_never_share_a_saga(tmp_path: Path) -> None:
    """Two storage objects (two connections) on one file claim in small batches at the same time:
    every expired saga is claimed exactly once."""
    db = tmp_path / "sagas.db"
    setup = SQLiteSagaStorage(db)
    ids = set()
    for _ in range(60):
        state = new_state("dead")
        await setup.create(state, EXPIRED)
        ids.add(state.saga_id)
    await setup.close()

    async def claim_all(owner: str) -> list[str]:
        store = SQLiteSagaStorage(db)
        claimed: list[str] = []
        try:
            while batch := await store.claim_expired(owner, LEASE, limit=3):
                claimed.extend(batch)
        finally:
            await store.close()
        return claimed

    first, second = await asyncio.gather(claim_all("r1"), claim_all("r2"))
    assert Counter(first + second) == Counter(ids), "a saga was claimed twice or not at all"
    owners = dict(query(db, "SELECT saga_id, lease_owner FROM saga_executions"))
    assert {sid for sid, owner in owners.items() if owner == "r1"} == set(first)


def test_two_processes_claiming_concurrently_never_share_a_saga(tmp_path: Path) -> None:
    """The same with two processes released at the same moment."""
    db = tmp_path / "sagas.db"

    async def setup() -> set[str]:
        store = SQLiteSagaStorage(db)
        ids = set()
        for _ in range(60):
            state = new_state("dead")
            await store.create(state, EXPIRED)
            ids.add(state.saga_id)
        await store.close()
        return ids

    ids = asyncio.run(setup())
    barrier = tmp_path / "barrier"
    first, second = run_together(barrier, [["claim", str(db), str(barrier), "p1"],
                                           ["claim", str(db), str(barrier), "p2"]])
    assert Counter(first + second) == Counter(ids), "a saga was claimed twice or not at all"


# -- running sagas on SQLite --------------------------------------------------------------------


def three_steps(name: str) -> Saga:
    saga = Saga(name=name)
    for step in ("reserve", "charge", "ship"):
        async def action(ctx: SagaContext, step: str = step) -> dict[str, Any]:
            return {step: f"{step}-{ctx['order']}"}

        async def undo(ctx: SagaContext) -> None:
            return None

        saga.add_step(step, action, undo)
    return saga


@pytest.mark.slow
async def test_group_commit_runs_200_concurrent_sagas(
    tmp_path: Path, use_config: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """200 sagas of 3 steps started together all complete with every step recorded, and their
    writes share transactions (fewer transactions than writes)."""
    batch_sizes: list[int] = []
    write_batch = sqlite_module._write_batch

    def counting_write_batch(conn: sqlite3.Connection, ops: list[Any]) -> list[Any]:
        batch_sizes.append(len(ops))
        return write_batch(conn, ops)

    monkeypatch.setattr(sqlite_module, "_write_batch", counting_write_batch)
    db = tmp_path / "sagas.db"
    use_config(storage=SQLiteSagaStorage(db), lease_seconds=LEASE)
    saga = three_steps("group-commit")

    contexts = await asyncio.gather(*(saga.run({"order": i}) for i in range(200)))

    assert [c["ship"] for c in contexts] == [f"ship-{i}" for i in range(200)]
    assert query(db, "SELECT status, count(*) FROM saga_executions GROUP BY status") == [
        ("COMPLETED", 200)]
    per_saga = query(db, "SELECT saga_id, count(*) FROM saga_steps WHERE status = 'COMPLETED' "
                         "GROUP BY saga_id")
    assert len(per_saga) == 200
    assert {count for _, count in per_saga} == {3}
    writes = 200 * (1 + 3)  # create, three step commits (the last one with the final status)
    assert sum(batch_sizes) >= writes
    assert len(batch_sizes) < writes, "every write had a transaction of its own"


async def test_a_saga_run_is_visible_through_a_second_storage(
    tmp_path: Path, use_config: Callable[..., Any]
) -> None:
    """A saga run with Saga.run is durable in the file: another storage object on it loads the
    final status, the merged context and every step's result; listing shows it without steps."""
    db = tmp_path / "sagas.db"
    use_config(storage=SQLiteSagaStorage(db))
    saga_id = str(uuid.uuid4())
    context = await three_steps("visible").run({"order": 7}, saga_id=saga_id)
    assert context == {"order": 7, "reserve": "reserve-7", "charge": "charge-7", "ship": "ship-7"}

    other = SQLiteSagaStorage(db)
    try:
        state = await other.load(saga_id)
        assert state is not None
        assert (state.saga_name, state.status, state.context) == (
            "visible", SagaStatus.COMPLETED, context)
        assert (state.lease_owner, state.lease_expires_at) == (None, None)
        assert {name: (s.status, s.result, s.attempts) for name, s in state.steps.items()} == {
            step: (StepStatus.COMPLETED, {step: f"{step}-7"}, 1)
            for step in ("reserve", "charge", "ship")}
        for step in state.steps.values():
            assert step.started_at is not None
            assert step.finished_at is not None
            assert step.started_at <= step.finished_at
        listed = await other.list_sagas()
        assert [(s.saga_id, s.status, s.steps) for s in listed] == [
            (saga_id, SagaStatus.COMPLETED, {})]
    finally:
        await other.close()


async def test_count_by_status(storage: SQLiteSagaStorage) -> None:
    """count_by_status counts every saga under its current status (empty file: no entries)."""
    assert await storage.count_by_status() == {}
    wanted = {SagaStatus.RUNNING: 3, SagaStatus.COMPLETED: 2, SagaStatus.COMPENSATING: 1,
              SagaStatus.COMPENSATED: 1, SagaStatus.FAILED: 1}
    for status, count in wanted.items():
        for _ in range(count):
            state = new_state()
            await storage.create(state, LEASE)
            if status is not SagaStatus.RUNNING:
                await storage.commit(UnitOfWork(state.saga_id, "owner-1", status=status,
                                                release_lease=status.is_final), LEASE)
    assert await storage.count_by_status() == wanted
    listed = await storage.list_sagas(SagaStatus.COMPLETED)
    assert [s.status for s in listed] == [SagaStatus.COMPLETED] * 2


# -- read-only ----------------------------------------------------------------------------------


async def test_readonly_storage_reads_but_refuses_writes(storage: SQLiteSagaStorage) -> None:
    """A readonly storage (a replica's stand-in) loads and lists sagas but refuses every write
    with StorageError, both while a writer has the file open and after it closed it."""
    state = new_state(order=3)
    await storage.create(state, LEASE)
    await storage.commit(UnitOfWork(state.saga_id, "owner-1", status=SagaStatus.COMPLETED,
                                    steps=[StepState("a", StepStatus.COMPLETED, {"a": 1})],
                                    release_lease=True), LEASE)
    expected = await storage.load(state.saga_id)

    async def check(reader: SQLiteSagaStorage) -> None:
        assert await reader.load(state.saga_id) == expected
        assert [s.saga_id for s in await reader.list_sagas()] == [state.saga_id]
        assert await reader.count_by_status() == {SagaStatus.COMPLETED: 1}
        writes = [
            reader.create(new_state(), LEASE),
            reader.commit(UnitOfWork(state.saga_id, "owner-1", context={"x": 1}), LEASE),
            reader.claim_expired("r", LEASE, 10),
            reader.renew_leases("owner-1", [state.saga_id], LEASE),
        ]
        for write in writes:
            with pytest.raises(sagaz.StorageError, match="read-only"):
                await write
        assert await reader.load(state.saga_id) == expected

    assert storage.path is not None
    reader = SQLiteSagaStorage(storage.path, readonly=True)
    await check(reader)
    await storage.close()
    await check(reader)
    await reader.close()
    reopened = SQLiteSagaStorage(storage.path, readonly=True)
    await check(reopened)
    await reopened.close()


async def test_readonly_storage_on_a_missing_file_says_so(tmp_path: Path) -> None:
    """Opening a read-only storage does not create the file: it fails with StorageError."""
    reader = SQLiteSagaStorage(tmp_path / "missing.db", readonly=True)
    with pytest.raises(sagaz.StorageError, match="does not exist"):
        await reader.load(str(uuid.uuid4()))
    assert not (tmp_path / "missing.db").exists()


# -- idempotent start across processes ----------------------------------------------------------


def test_idempotent_start_across_processes_runs_each_step_once(tmp_path: Path) -> None:
    """Three processes start the same idempotency_key on one file at the same moment: each action
    runs exactly once (in one process) and every process returns the same final context."""
    db, barrier, effects_file = tmp_path / "sagas.db", tmp_path / "barrier", tmp_path / "effects"
    argv = ["start", str(db), str(barrier), str(effects_file), "order-42"]
    contexts = run_together(barrier, [argv] * 3)

    assert contexts[0] == contexts[1] == contexts[2]
    runs = [line.split() for line in effects_file.read_text().splitlines()]
    assert sorted(step for _, step, _ in runs) == ["a", "b", "c"], runs
    runners = {int(pid) for _, _, pid in runs}
    assert len(runners) == 1, "the steps ran in more than one process"
    runner = runners.pop()
    assert contexts[0] == {"order": "order-42", **{f"{s}_by": runner for s in "abc"}}
    assert query(db, "SELECT status, count(*) FROM saga_executions GROUP BY status") == [
        ("COMPLETED", 1)]
