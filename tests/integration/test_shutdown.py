"""A program that runs a load and shuts down leaves nothing pending: ``await sagaz.shutdown()``
after ``sagaz.configure(...)``, or a storage used as an async context manager. Run as a real
interpreter, whose exit is where "Task was destroyed but it is pending!" used to appear."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

CHILD = textwrap.dedent("""
    import asyncio, sys
    import sagaz
    from sagaz import Saga, SagaConfig

    kind, where, mode = sys.argv[1:4]

    def make_storage():
        if kind == "sqlite":
            from sagaz.storage.sqlite import SQLiteSagaStorage
            return SQLiteSagaStorage(where)
        from sagaz.storage.postgresql import PostgreSQLSagaStorage
        return PostgreSQLSagaStorage(where, max_size=8, retry_timeout=10)

    async def reserve(ctx):
        await asyncio.sleep(0)
        return {"reserved": True}

    async def charge(ctx):
        ctx.emit("Charged", {"order": ctx["order"]})

    async def undo(ctx):
        return None

    def saga(config=None):
        return (Saga(name="shutdown-load", config=config)
                .add_step("reserve", reserve, undo).add_step("charge", charge))

    async def load(s):
        # All at once: the first calls race to open the pool.
        results = await asyncio.gather(*(s.execute({"order": i}) for i in range(600)))
        assert all(r.status.value == "COMPLETED" for r in results)

    async def main():
        if mode == "shutdown":
            sagaz.configure(SagaConfig(storage=make_storage()))
            try:
                await load(saga())
            finally:
                await sagaz.shutdown()
        else:
            async with make_storage() as storage:
                await load(saga(SagaConfig(storage=storage)))

    asyncio.run(main())
    print("ok")
""")


@pytest.mark.parametrize("mode", ["shutdown", "async-with"])
@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_a_load_then_shutdown_leaves_nothing_pending(
    request: pytest.FixtureRequest, tmp_path: Path, kind: str, mode: str
) -> None:
    where = (str(tmp_path / "sagas.db") if kind == "sqlite"
             else request.getfixturevalue("pg_dsn"))
    # -W default shows ResourceWarnings (unclosed sockets, files) as well.
    result = subprocess.run([sys.executable, "-W", "default", "-c", CHILD, kind, where, mode],
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
    for symptom in ("Task was destroyed", "pending", "never awaited", "ResourceWarning",
                    "unclosed", "Traceback"):
        assert symptom not in result.stderr, result.stderr
    assert result.stderr == ""


async def test_shutdown_forgets_the_configuration_and_is_idempotent(tmp_path: Path) -> None:
    import sagaz
    from sagaz.storage.sqlite import SQLiteSagaStorage

    storage = SQLiteSagaStorage(str(tmp_path / "sagas.db"))
    sagaz.configure(sagaz.SagaConfig(storage=storage, analytics_storage=storage))
    await sagaz.shutdown()
    await sagaz.shutdown()  # nothing configured: nothing to do
    assert sagaz.configure(None) is None
