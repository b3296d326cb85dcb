-- The audit log of the embedded storage: one row per state transition of a saga or a step and
-- one per failed attempt, written in the transaction of the change it records (see
-- sagaz/storage/audit.py). Same columns as PostgreSQL's saga_audit_log (not partitioned here).
-- No foreign key to saga_executions, as on PostgreSQL: the history is a record of what
-- happened, not part of the saga's state.

CREATE TABLE saga_audit_log (
    -- The rowid: it grows with every insert, so it orders a saga's rows as they were written.
    id         INTEGER PRIMARY KEY,
    saga_id    TEXT,
    event      TEXT NOT NULL,
    details    TEXT NOT NULL DEFAULT '{}',
    created_at REAL NOT NULL
);

-- `sagaz sagas show` reads one saga's history in id order.
CREATE INDEX saga_audit_log_saga_id ON saga_audit_log (saga_id, id);
