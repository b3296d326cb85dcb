-- Durable waits, signals and timers (sagaz/engine/waits.py); the same design as PostgreSQL's
-- migration 0005. SQLite cannot change a CHECK constraint in place, so saga_executions (and
-- saga_steps, whose foreign key points at it) are rebuilt with WAITING allowed. The steps move
-- first: dropping saga_executions while they reference it would cascade-delete them.

CREATE TABLE saga_executions_new (
    saga_id          TEXT PRIMARY KEY,
    saga_name        TEXT NOT NULL,
    status           TEXT NOT NULL CHECK (status IN
                         ('PENDING', 'RUNNING', 'WAITING', 'COMPENSATING', 'COMPLETED',
                          'COMPENSATED', 'FAILED')),
    context          TEXT NOT NULL,
    failed_step      TEXT,
    error            TEXT,
    idempotency_key  TEXT,
    created_at       REAL NOT NULL,
    updated_at       REAL NOT NULL,
    lease_owner      TEXT,
    lease_expires_at REAL,
    version          INTEGER NOT NULL DEFAULT 0,
    definition_fingerprint TEXT,
    definition_version     TEXT,
    cancel_requested       TEXT,
    -- A WAITING saga is due from then on (its earliest timer; 0 once a signal arrived).
    wake_at          REAL,
    -- Signals ever sent to the saga: a park that saw fewer wakes the saga at once.
    signal_seq       INTEGER NOT NULL DEFAULT 0
);

INSERT INTO saga_executions_new (saga_id, saga_name, status, context, failed_step, error,
                                 idempotency_key, created_at, updated_at, lease_owner,
                                 lease_expires_at, version, definition_fingerprint,
                                 definition_version, cancel_requested)
SELECT saga_id, saga_name, status, context, failed_step, error, idempotency_key, created_at,
       updated_at, lease_owner, lease_expires_at, version, definition_fingerprint,
       definition_version, cancel_requested
  FROM saga_executions;

CREATE TABLE saga_steps_new (
    saga_id            TEXT NOT NULL REFERENCES saga_executions_new (saga_id) ON DELETE CASCADE,
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

INSERT INTO saga_steps_new SELECT saga_id, step_name, status, result, error, attempts, started_at,
                                  finished_at, compensation_error
                             FROM saga_steps;

DROP TABLE saga_steps;
DROP TABLE saga_executions;
-- Renaming also rewrites saga_steps_new's reference to the new name.
ALTER TABLE saga_executions_new RENAME TO saga_executions;
ALTER TABLE saga_steps_new RENAME TO saga_steps;

CREATE INDEX saga_executions_created_at ON saga_executions (created_at);
CREATE INDEX saga_executions_status_created_at ON saga_executions (status, created_at);
CREATE INDEX saga_executions_lease ON saga_executions (lease_expires_at)
    WHERE lease_expires_at IS NOT NULL;
-- The due-saga query of every worker interval: only parked sagas are in it.
CREATE INDEX saga_executions_wake_at ON saga_executions (wake_at) WHERE status = 'WAITING';

-- Signals kept until a wait of their name consumes them; the rowid orders them.
CREATE TABLE saga_signals (
    seq         INTEGER PRIMARY KEY,
    saga_id     TEXT NOT NULL,
    signal_id   TEXT NOT NULL,
    name        TEXT NOT NULL,
    payload     TEXT NOT NULL,
    created_at  REAL NOT NULL,
    consumed    INTEGER NOT NULL DEFAULT 0,
    UNIQUE (saga_id, signal_id)
);
