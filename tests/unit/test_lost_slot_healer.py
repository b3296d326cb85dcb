"""How the supervisor schedules rebuilds of replicas whose slot was lost (sagaz.ha.slots): one at
a time per node, logged once per attempt, a failed one tried again only after its delay. The
finding and the rebuild themselves run on a real cluster in tests/ha/test_lost_slot.py; here they
are replaced, since the schedule is the subject."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from sagaz.engine.retry import RetryPolicy
from sagaz.errors import SagazError
from sagaz.ha import slots
from sagaz.ha.dirlock import directory_lock
from sagaz.ha.local import ClusterState, LocalCluster


async def test_a_failed_rebuild_waits_for_its_delay_and_one_runs_at_a_time(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    cluster = LocalCluster(tmp_path, ClusterState(25432, "sagaz", ["node0", "node1"], "node0",
                                                  "/nonexistent"))
    outcomes = [SagazError("pg_basebackup failed (exit 1): no space left"), None]
    calls: list[str] = []

    def rebuild(_: LocalCluster, name: str) -> str:
        calls.append(name)
        outcome = outcomes.pop(0)
        if outcome is not None:
            raise outcome
        return "pg_basebackup"

    monkeypatch.setattr(slots, "unrecoverable_replicas",
                        lambda *_: {"node1": "its replication slot was lost"})
    monkeypatch.setattr(slots, "rebuild", rebuild)
    monkeypatch.setattr(LocalCluster, "load", classmethod(lambda cls, _: cluster))
    now = [100.0]
    healer = slots.LostSlotHealer(RetryPolicy(base_delay=10.0, max_delay=10.0, jitter=False),
                                  clock=lambda: now[0])
    caplog.set_level(logging.INFO, logger="sagaz.ha.slots")

    await healer.check(cluster)
    assert healer.rebuilding == ["node1"]
    await healer.check(cluster)  # under way: not started twice
    await healer.close()  # waits for the rebuild under way
    assert calls == ["node1"]
    await healer.check(cluster)  # failed 0 s ago: waits its 10 s
    assert healer.rebuilding == [] and calls == ["node1"]
    now[0] += 10.0
    await healer.check(cluster)
    await healer.close()  # waits for the rebuild under way
    assert calls == ["node1", "node1"]
    messages = [r.getMessage() for r in caplog.records]
    assert [m for m in messages if "rebuilding it" in m] == [
        "node1 can no longer stream: its replication slot was lost; rebuilding it from a fresh "
        "base backup with a new slot",
        "node1 can no longer stream: its replication slot was lost; rebuilding it from a fresh "
        "base backup with a new slot (attempt 2)"]
    assert any("rebuilding node1 failed: pg_basebackup failed (exit 1): no space left; trying "
               "again in 10 s" in m for m in messages)
    assert any(m.startswith("rebuilt node1 in") for m in messages)
    await healer.close()


async def test_a_primary_that_does_not_answer_is_no_news(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    def unreadable(*_: object) -> dict[str, str]:
        raise SagazError("replication slots of node0: connection refused")

    monkeypatch.setattr(slots, "unrecoverable_replicas", unreadable)
    cluster = LocalCluster(tmp_path, ClusterState(25432, "sagaz", ["node0", "node1"], "node0",
                                                  "/nonexistent"))
    caplog.set_level(logging.INFO, logger="sagaz.ha.slots")
    healer = slots.LostSlotHealer()
    await healer.check(cluster)
    assert healer.rebuilding == [] and not caplog.records


async def test_no_rebuild_while_another_command_holds_the_cluster(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    cluster = LocalCluster(tmp_path, ClusterState(25432, "sagaz", ["node0", "node1"], "node0",
                                                  "/nonexistent"))
    calls: list[str] = []
    monkeypatch.setattr(slots, "unrecoverable_replicas",
                        lambda *_: {"node1": "its replication slot was lost"})
    monkeypatch.setattr(slots, "rebuild", lambda _, name: calls.append(name))
    monkeypatch.setattr(LocalCluster, "load", classmethod(lambda cls, _: cluster))
    healer = slots.LostSlotHealer(RetryPolicy(base_delay=10.0, max_delay=10.0, jitter=False),
                                  clock=lambda: 100.0)
    caplog.set_level(logging.INFO, logger="sagaz.ha.slots")

    with directory_lock(tmp_path):  # e.g. `sagaz ha rejoin node1` at work
        await healer.check(cluster)
        await healer.close()
    assert calls == []
    assert any("busy with another command" in r.getMessage() for r in caplog.records)
    await healer.check(cluster)  # no failure was counted: the next pass rebuilds
    await healer.close()
    assert calls == ["node1"]
