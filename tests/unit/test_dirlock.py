"""The lock that serialises `sagaz dev up|down|restart` and `sagaz ha` on one directory."""

from __future__ import annotations

import os
import shutil
import stat
import threading
from pathlib import Path

from sagaz.ha.dirlock import LOCK_FILE, directory_lock


def test_the_lock_file_is_private_and_names_its_holder(tmp_path: Path) -> None:
    with directory_lock(tmp_path):
        path = tmp_path / LOCK_FILE
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert path.read_text().strip() == str(os.getpid())


def test_a_second_holder_waits_and_is_told_who_holds_it(tmp_path: Path) -> None:
    order: list[str] = []
    told: list[int | None] = []

    def second() -> None:
        with directory_lock(tmp_path, told.append):
            order.append("second")

    with directory_lock(tmp_path):
        waiter = threading.Thread(target=second)
        waiter.start()
        waiter.join(0.3)
        assert waiter.is_alive() and not order  # it waits
        order.append("first")
    waiter.join(5)
    assert order == ["first", "second"]
    assert told == [os.getpid()]


def test_a_waiter_whose_directory_was_purged_locks_the_new_file(tmp_path: Path) -> None:
    directory = tmp_path / "cluster"
    directory.mkdir()
    inside = threading.Event()
    release = threading.Event()

    def waiter() -> None:
        with directory_lock(directory):
            inside.set()
            release.wait(5)

    with directory_lock(directory):
        thread = threading.Thread(target=waiter)
        thread.start()
        thread.join(0.2)
        shutil.rmtree(directory)  # what `sagaz dev down --purge` does while holding the lock
    assert inside.wait(5)
    # The waiter holds the lock of the file that is there now: a newcomer has to wait for it.
    newcomer_in = threading.Event()

    def newcomer() -> None:
        with directory_lock(directory):
            newcomer_in.set()

    late = threading.Thread(target=newcomer)
    late.start()
    assert not newcomer_in.wait(0.3)
    release.set()
    assert newcomer_in.wait(5)
    thread.join(5)
    late.join(5)
