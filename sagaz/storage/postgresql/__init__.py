"""PostgreSQL storage (extra ``sagaz[postgres]``): the only place besides SQLite that talks to a
database driver (psycopg 3).

:mod:`sagaz.storage.postgresql.migrate` applies the schema of ``sagaz/storage/sql/postgresql``:
partitioned saga, outbox and audit tables, the consumer inbox, and the partition maintenance
functions (``maintain_all_partitions()`` and friends).
"""

from sagaz.storage.postgresql.storage import PostgreSQLSagaStorage

__all__ = ["PostgreSQLSagaStorage"]
