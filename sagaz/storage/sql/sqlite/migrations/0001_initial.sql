-- Saga state for the embedded SQLite storage.
-- Timestamps are Unix epoch seconds (REAL); JSON is stored as TEXT.

CREATE TABLE saga_executions (
    saga_id          TEXT PRIMARY KEY,
    saga_name        TEXT NOT NULL,
    status           TEXT NOT NULL CHECK (status IN
                         ('PENDING', 'RUNNING', 'COMPENSATING', 'COMPLETED', 'COMPENSATED', 'FAILED')),
    context          TEXT NOT NULL,
    failed_step      TEXT,
    error            TEXT,
    idempotency_key  TEXT,
    created_at       REAL NOT NULL,
    updated_at       REAL NOT NULL,
    -- The executor currently running the saga and until when its claim holds; both NULL once the
    -- saga is final. Recovery claims rows whose lease expired.
    lease_owner      TEXT,
    lease_expires_at REAL,
    version          INTEGER NOT NULL DEFAULT 0
);

CREATE INDEX saga_executions_created_at ON saga_executions (created_at);
CREATE INDEX saga_executions_status_created_at ON saga_executions (status, created_at);
CREATE INDEX saga_executions_lease ON saga_executions (lease_expires_at)
    WHERE lease_expires_at IS NOT NULL;

CREATE TABLE saga_steps (
    saga_id            TEXT NOT NULL REFERENCES saga_executions (saga_id) ON DELETE CASCADE,
    step_name          TEXT NOT NULL,
    status             TEXT NOT NULL CHECK (status IN
                           ('PENDING', 'COMPLETED', 'FAILED', 'CANCELLED', 'UNKNOWN', 'COMPENSATED',
                            'COMPENSATION_FAILED')),
    result             TEXT,
    error              TEXT,
    attempts           INTEGER NOT NULL DEFAULT 0,
    started_at         REAL,
    finished_at        REAL,
    compensation_error TEXT,
    PRIMARY KEY (saga_id, step_name)
) WITHOUT ROWID;
