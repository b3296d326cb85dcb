"""``sagaz outbox``: the transactional outbox of the storage (SQLite or PostgreSQL): its state,
and the dead letters (events the broker refused ``max_attempts`` times): list, retry, purge."""

from __future__ import annotations

import uuid
from functools import partial
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from sagaz.outbox.store import StorageWithOutbox

from .common import MAX_LIMIT, ExitCode, Storages, execute, fail, run_async
from .output import escape, format_time, out, table_console

if TYPE_CHECKING:
    from sagaz.outbox.store import ManagedOutboxStore

__all__ = ["outbox_app"]

HELP = """\
The transactional outbox of the storage (SQLite or PostgreSQL, SAGAZ_STORAGE_URL). Steps emit
events with `ctx.emit(...)`; they are written with the step's completion and relayed to the broker
(SAGAZ_BROKER_URL) by `sagaz worker`. An event the broker refused `max_attempts` times is a
**dead letter**: fix the cause, then `sagaz outbox dlq retry`.
"""

outbox_app = typer.Typer(name="outbox", no_args_is_help=True, help=HELP,
                         rich_markup_mode="markdown")
dlq_app = typer.Typer(name="dlq", no_args_is_help=True,
                      help="Dead letters: list them, send them again, or delete them.")
outbox_app.add_typer(dlq_app, name="dlq")

IdsArgument = Annotated[list[str] | None, typer.Argument(
    metavar="[EVENT_ID]...", help="Only these events (default: every dead letter).",
    show_default=False)]


def _outbox(storages: Storages) -> ManagedOutboxStore:
    storage = storages.config().write_storage
    if not isinstance(storage, StorageWithOutbox):
        fail(f"{storage!r} keeps no outbox; set SAGAZ_STORAGE_URL to the SQLite file or the "
             "PostgreSQL database the sagas run on (sqlite:///path.db or "
             "postgresql://user@host:5432/dbname)")
    return storage.outbox_store()


@outbox_app.command()
def status() -> None:
    """How many events are in each state (PENDING, CLAIMED, SENT, FAILED, DEAD_LETTER)."""

    async def body(storages: Storages) -> int:
        counts = await _outbox(storages).counts()
        table = Table(title="outbox", title_justify="left")
        table.add_column("status")
        table.add_column("events", justify="right")
        for name in ("PENDING", "CLAIMED", "FAILED", "DEAD_LETTER", "SENT"):
            table.add_row(name, f"{counts.get(name, 0):,}")
        table_console().print(table)
        return ExitCode.OK

    execute(lambda: run_async(body))


@dlq_app.command("list")
def list_dead(
    limit: Annotated[int, typer.Option(
        "--limit", min=1, max=MAX_LIMIT, help="At most this many.")] = 100,
) -> None:
    """Dead letters, oldest first, with their last error."""

    async def body(storages: Storages) -> int:
        dead = await _outbox(storages).dead_letters(limit)
        if not dead:
            out.print("no dead letters")
            return ExitCode.OK
        table = Table(title=f"dead letters ({len(dead)} shown)", title_justify="left")
        for column in ("event id", "type", "key", "attempts", "created", "last error"):
            table.add_column(column, overflow="fold")
        for d in dead:
            table.add_row(d.event_id, escape(d.event_type), escape(d.key or ""), str(d.attempts),
                          format_time(d.created_at), escape(d.last_error or "", multiline=True))
        table_console().print(table)
        return ExitCode.OK

    execute(lambda: run_async(body))


@dlq_app.command("retry")
def retry_dead(ids: IdsArgument = None) -> None:
    """Send dead letters again: back to PENDING with their attempts reset."""
    execute(lambda: run_async(partial(_change, "retry", ids)))


@dlq_app.command("purge")
def purge_dead(
    ids: IdsArgument = None,
    yes: Annotated[bool, typer.Option("--yes", help="Purge every dead letter: required when "
                                      "no EVENT_ID is given.")] = False,
) -> None:
    """Delete dead letters for good."""
    if not ids and not yes:
        execute(lambda: fail("purging every dead letter needs --yes (or name EVENT_IDs)"))
    execute(lambda: run_async(partial(_change, "purge", ids)))


async def _change(what: str, ids: list[str] | None, storages: Storages) -> int:
    for event_id in ids or ():
        try:
            uuid.UUID(event_id)
        except ValueError:
            fail(f"{event_id!r} is not an event id; event ids are UUIDs, as "
                 "`sagaz outbox dlq list` shows them")
    outbox = _outbox(storages)
    change = outbox.retry_dead if what == "retry" else outbox.purge_dead
    count = await change(ids or None)
    done = "sent back to PENDING" if what == "retry" else "deleted"
    out.print(f"{count} dead letter(s) {done}")
    return ExitCode.OK if count or not ids else ExitCode.FAILED
