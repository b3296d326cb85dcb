-- Definition versions and operator verbs (see sagaz/engine/versions.py, sagaz/engine/operator.py).
--
-- Each saga records the fingerprint and version label of the definition it started with, so that
-- recovery finishes it with that definition (or leaves it alone when it is not registered), and a
-- cancel request (who, why, when) that whoever compensates the saga honours.

ALTER TABLE saga_executions ADD COLUMN definition_fingerprint TEXT;
ALTER TABLE saga_executions ADD COLUMN definition_version TEXT;
ALTER TABLE saga_executions ADD COLUMN cancel_requested TEXT;

-- The shape (steps, dependencies, compensations) of every definition a saga started with, by
-- fingerprint: lets `sagaz sagas check-versions` and recovery say what differs from the
-- definitions registered now. Written once per definition, never updated.
CREATE TABLE saga_definitions (
    fingerprint TEXT PRIMARY KEY,
    saga_name   TEXT NOT NULL,
    version     TEXT,
    shape       TEXT NOT NULL,
    recorded_at REAL NOT NULL
) WITHOUT ROWID;
