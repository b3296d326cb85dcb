-- Definition versions and operator verbs (see sagaz/engine/versions.py, sagaz/engine/operator.py).
--
-- Each saga records the fingerprint and version label of the definition it started with, so that
-- recovery finishes it with that definition (or leaves it alone when it is not registered), and a
-- cancel request (who, why, when) that whoever compensates the saga honours. Nullable columns
-- without a default: adding them rewrites no partition. Partition maintenance moves rows with
-- SELECT *, so the new columns travel with them.

ALTER TABLE saga_executions ADD COLUMN definition_fingerprint text;
ALTER TABLE saga_executions ADD COLUMN definition_version text;
ALTER TABLE saga_executions ADD COLUMN cancel_requested jsonb;

-- The shape (steps, dependencies, compensations) of every definition a saga started with, by
-- fingerprint: lets `sagaz sagas check-versions` and recovery say what differs from the
-- definitions registered now. A handful of rows, written once per definition, never updated.
CREATE TABLE saga_definitions (
    fingerprint text        NOT NULL,
    saga_name   text        NOT NULL,
    version     text,
    shape       jsonb       NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT saga_definitions_pkey PRIMARY KEY (fingerprint)
);
