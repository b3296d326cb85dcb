"""Code changes while sagas are in flight, on every storage (one body each).

Sagas start with v1 and their process dies mid-way (SIGKILL of a child process; for the
in-memory storage, whose data lives in this process, the executor's tasks are abandoned the same
way: nothing of theirs runs or commits afterwards). The new code registers v2 (a step renamed,
one added, one removed). Recovery then:

* with only v2 registered: leaves the v1 sagas untouched (state, steps and effects as the crash
  left them, no lease kept), reports them stuck, logs their fingerprint and what differs, and
  ``check_versions`` says so;
* with v1 registered again next to v2: finishes them with v1, and no v2 step ever runs.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
import uuid
from pathlib import Path

import pytest
from effects_file import read_lines
from killed_child import child_env, sigkill_child_once_paused
from storage_contract import Backend
from versioned_sagas import V1_STEPS, V2_STEPS, forget, set_pausing, v1, v2

import sagaz
from sagaz import SagaStatus
from sagaz.engine.fingerprint import fingerprint_of
from sagaz.engine.operator import check_versions
from sagaz.engine.types import SagaState

CHILD = Path(__file__).with_name("versioned_child.py")
LEASE = 0.5
DEADLINE = 15.0
# Where each saga is when its process dies: charge started (reserve committed), and ship's
# effect happened but its commit did not.
PAUSES = {"in_charge": "before-action:charge", "after_ship": "after-action:ship"}


async def wait_for_markers(marker: Path, count: int) -> None:
    deadline = time.monotonic() + DEADLINE
    while len(read_lines(marker)) < count:
        if time.monotonic() > deadline:
            pytest.fail(f"the sagas did not reach their pauses within {DEADLINE}s")
        await asyncio.sleep(0.01)


def kill_child_once_paused(url: str, tmp_path: Path, name: str, pauses: dict[str, str]) -> None:
    """Run the sagas (id -> pause point) in a child process; SIGKILL it once all paused."""
    effects, marker = tmp_path / "effects.log", tmp_path / "marker"
    env = child_env(SAGAZ_STORAGE_URL=url, SAGAZ_LEASE_SECONDS=str(LEASE))
    stderr_path = tmp_path / "child.stderr"
    args = [sys.executable, str(CHILD), name, str(effects), str(marker),
            *(f"{saga_id}={pause}" for saga_id, pause in pauses.items())]
    sigkill_child_once_paused(args, env, stderr_path,
                              paused=lambda: len(read_lines(marker)) >= len(pauses),
                              waiting_for="all the sagas' pauses", within=DEADLINE, poll=0.01)


async def start_v1_and_die(backend: Backend, tmp_path: Path, name: str) -> dict[str, str]:
    """Start one v1 saga per PAUSES entry; kill their executor once all have paused."""
    ids = {label: str(uuid.uuid4()) for label in PAUSES}
    if backend.url is not None:
        kill_child_once_paused(backend.url, tmp_path, name,
                               {saga_id: PAUSES[label] for label, saga_id in ids.items()})
        return ids
    effects, marker = tmp_path / "effects.log", tmp_path / "marker"
    saga = v1(name)
    set_pausing(True)
    tasks = [asyncio.create_task(saga.execute(
        {"effects": str(effects), "marker": str(marker), "pause_at": PAUSES[label]},
        saga_id=saga_id)) for label, saga_id in ids.items()]
    try:
        await wait_for_markers(marker, len(ids))
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        set_pausing(False)
    forget(name)  # the new code is deployed: v1 is no longer registered
    return ids


async def wait_for_leases(states: list[SagaState]) -> None:
    latest = max(s.lease_expires_at or 0.0 for s in states)
    await asyncio.sleep(max(0.0, latest - time.time()) + 0.05)


def effects_of(tmp_path: Path, saga_id: str) -> list[str]:
    return [line.split(" ", 1)[1] for line in read_lines(tmp_path / "effects.log")
            if line.startswith(saga_id)]


def steps_of(state: SagaState) -> dict[str, str]:
    return {name: step.status.value for name, step in state.steps.items()}


@pytest.mark.slow
@pytest.mark.timeout(60)
async def test_v1_sagas_in_flight_are_stuck_under_v2_and_finish_with_v1_never_running_v2(
    storage_backend: Backend, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    name = f"versioned-{uuid.uuid4().hex[:8]}"
    storage_backend.config(lease_seconds=LEASE)
    ids = await start_v1_and_die(storage_backend, tmp_path, name)
    storage = storage_backend.storage
    crashed = {sid: await storage.load(sid) for sid in ids.values()}
    assert all(s is not None and s.status is SagaStatus.RUNNING for s in crashed.values())
    old_fingerprint = fingerprint_of(v1(name))
    assert {s.definition_fingerprint for s in crashed.values() if s} == {old_fingerprint}
    assert {s.definition_version for s in crashed.values() if s} == {"1"}
    effects_at_crash = read_lines(tmp_path / "effects.log")

    new = v2(name)
    sagaz.register(new)
    await wait_for_leases([s for s in crashed.values() if s])
    with caplog.at_level(logging.ERROR, logger="sagaz.engine.recovery"):
        report = await sagaz.recover()
    assert report.finished == {}
    assert report.errors == {}
    assert set(report.stuck) == set(ids.values())
    assert report.unknown_definitions == {}, "a definition of the name is registered"
    for saga_id, before in crashed.items():
        after = await storage.load(saga_id)
        assert after is not None and before is not None
        assert (after.status, steps_of(after), after.context) == (
            before.status, steps_of(before), before.context), "left untouched"
        assert after.lease_owner is None, "recovery gave up its claim"
        assert after.definition_fingerprint == old_fingerprint
    assert read_lines(tmp_path / "effects.log") == effects_at_crash, "nothing ran"
    stuck_logs = [r for r in caplog.records if getattr(r, "action", None) == "recovery_stuck"]
    assert {getattr(r, "saga_id", None) for r in stuck_logs} == set(ids.values())
    for record in stuck_logs:
        assert getattr(record, "fingerprint", None) == old_fingerprint
        message = record.getMessage()
        assert old_fingerprint in message and fingerprint_of(new) in message
        assert "removed steps charge, ship" in message
        assert "added steps charge_card, notify" in message

    choices = {c.saga_id: c for c in await check_versions()}
    assert set(choices) == set(ids.values())
    assert all(c.stuck for c in choices.values())

    # The operator registers v1 again, next to v2: the sagas finish with v1.
    sagaz.register(v1(name))
    choices = {c.saga_id: c for c in await check_versions()}
    assert not any(c.stuck for c in choices.values())
    assert {c.runs_with for c in choices.values()} == {f"{name} v1 ({old_fingerprint})"}
    # A stuck saga is looked at again once the lease of the pass that left it has run out.
    await asyncio.sleep(LEASE + 0.05)
    report = await sagaz.recover()
    assert report.errors == {}
    assert report.finished == dict.fromkeys(ids.values(), SagaStatus.COMPLETED)
    for saga_id in ids.values():
        done = await storage.load(saga_id)
        assert done is not None and set(done.steps) == set(V1_STEPS)
        actions = [e.split()[1] for e in effects_of(tmp_path, saga_id) if e.startswith("action")]
        assert set(actions) == set(V1_STEPS)
    every_effect = " ".join(read_lines(tmp_path / "effects.log"))
    for step in set(V2_STEPS) - set(V1_STEPS):
        assert step not in every_effect, f"v1 sagas never run v2's step {step}"
    forget(name)
