"""Saga storages: the interface, in-memory (tests) and SQLite (the embedded default).

PostgreSQL lives in :mod:`sagaz.storage.postgresql` (extra ``sagaz[postgres]``).
"""

from sagaz.storage.base import SagaStorage, UnitOfWork
from sagaz.storage.memory import InMemorySagaStorage

__all__ = ["InMemorySagaStorage", "SagaStorage", "UnitOfWork"]
