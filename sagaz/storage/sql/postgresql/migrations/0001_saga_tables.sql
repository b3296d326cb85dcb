-- Saga state, outbox, audit log and consumer inbox for PostgreSQL.
--
-- The three high-volume tables are range-partitioned on created_at (timestamptz): saga_executions
-- and saga_audit_log monthly, saga_outbox daily. Old data leaves by DROPping whole partitions
-- (0002: maintain_all_partitions), never by DELETE, so there is no bloat and no vacuum debt.
--
-- PostgreSQL requires every PRIMARY KEY / UNIQUE constraint of a partitioned table to include the
-- partition key, hence (saga_id, created_at) and friends. Consequence: the database cannot enforce
-- that a saga_id is unique across partitions (two inserts with different created_at both succeed).
-- Ids are random or uuid5(idempotency key), so the storage must create a saga with "insert unless
-- a row with this saga_id exists", serialized per saga_id (e.g. pg_advisory_xact_lock on a hash of
-- it), and not rely on a unique violation.
--
-- Every partitioned table gets a DEFAULT partition so an insert never fails when maintenance lags
-- behind the clock (or a row carries a far past/future timestamp); maintenance moves such rows into
-- their proper partitions. The dated partitions are created by the functions of 0002.
--
-- Partition bounds are UTC midnights (see 0002), whatever the session TimeZone.

CREATE TABLE saga_executions (
    saga_id          uuid        NOT NULL,
    saga_name        text        NOT NULL,
    status           text        NOT NULL
        CONSTRAINT saga_executions_status_check CHECK (status IN
            ('PENDING', 'RUNNING', 'COMPENSATING', 'COMPLETED', 'COMPENSATED', 'FAILED')),
    context          jsonb       NOT NULL DEFAULT '{}'::jsonb,
    failed_step      text,
    error            text,
    idempotency_key  text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    -- The executor currently running the saga and until when its claim holds; both NULL once the
    -- saga is final. Recovery claims rows whose lease expired.
    lease_owner      text,
    lease_expires_at timestamptz,
    -- Optimistic concurrency: every update does "SET version = version + 1 WHERE version = $seen".
    version          bigint      NOT NULL DEFAULT 0,
    -- Lookup by saga_id alone uses this index (saga_id is its leading column): one index probe
    -- per partition; callers that know created_at add it to prune to a single partition.
    CONSTRAINT saga_executions_pkey PRIMARY KEY (saga_id, created_at)
) PARTITION BY RANGE (created_at);

CREATE TABLE saga_executions_default PARTITION OF saga_executions DEFAULT;

-- Listing ("sagaz sagas list --status RUNNING", dashboards) filters on status, newest first.
CREATE INDEX saga_executions_status_created_at ON saga_executions (status, created_at);
-- "Latest sagas" and time-range reports without a status: without this index they sort a whole
-- partition (measured: 70 ms for the latest 50 of a 380k-row month).
-- New rows always go to its right edge, so it is cheap to maintain.
CREATE INDEX saga_executions_created_at ON saga_executions (created_at);
-- Recovery scans unfinished sagas whose lease expired. Final sagas have a NULL lease, so the
-- partial index only holds the (few) live sagas and stays small however large the table grows.
CREATE INDEX saga_executions_lease_expires_at ON saga_executions (lease_expires_at)
    WHERE lease_expires_at IS NOT NULL;
-- Idempotency keys are looked up (not enforced unique: see the header) when a run names one.
CREATE INDEX saga_executions_idempotency_key ON saga_executions (idempotency_key)
    WHERE idempotency_key IS NOT NULL;

-- Not partitioned (small per saga, always read together with its saga). No foreign key to
-- saga_executions: its key includes created_at, and a foreign key would block dropping old
-- partitions; maintenance deletes the steps of the sagas whose partition it drops.
CREATE TABLE saga_steps (
    saga_id            uuid        NOT NULL,
    step_name          text        NOT NULL,
    status             text        NOT NULL
        CONSTRAINT saga_steps_status_check CHECK (status IN
            ('PENDING', 'COMPLETED', 'FAILED', 'CANCELLED', 'UNKNOWN', 'COMPENSATED',
             'COMPENSATION_FAILED')),
    result             jsonb,
    error              text,
    attempts           integer     NOT NULL DEFAULT 0,
    started_at         timestamptz,
    finished_at        timestamptz,
    compensation_error text,
    CONSTRAINT saga_steps_pkey PRIMARY KEY (saga_id, step_name)
);

-- Transactional outbox: written in the same transaction as the saga state, published by workers.
-- Status lifecycle:
--   PENDING      waiting to be published (from next_attempt_at on)
--   CLAIMED      a worker (claimed_by) holds it until claimed_until; an expired claim is taken over
--   SENT         published (sent_at); stays until its daily partition is dropped
--   FAILED       the last attempt failed (last_error); retried from next_attempt_at on
--   DEAD_LETTER  gave up after too many attempts; kept for inspection until retention drops it
CREATE TABLE saga_outbox (
    -- Insertion order, the publication order of the events of one key (aggregate_id). For one
    -- key it is also the commit order as long as its writers commit one after the other, as
    -- the steps of one saga do. BY DEFAULT: maintenance moves rows out of DEFAULT with theirs.
    seq             bigint      GENERATED BY DEFAULT AS IDENTITY,
    event_id        uuid        NOT NULL,
    saga_id         uuid,
    event_type      text        NOT NULL,
    -- Also the broker message key (Kafka partition key, RabbitMQ routing hint): events of one
    -- aggregate keep their order.
    aggregate_id    text,
    payload         jsonb       NOT NULL DEFAULT '{}'::jsonb,
    headers         jsonb       NOT NULL DEFAULT '{}'::jsonb,
    status          text        NOT NULL DEFAULT 'PENDING'
        CONSTRAINT saga_outbox_status_check CHECK (status IN
            ('PENDING', 'CLAIMED', 'SENT', 'FAILED', 'DEAD_LETTER')),
    attempts        integer     NOT NULL DEFAULT 0,
    last_error      text,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    claimed_by      text,
    claimed_until   timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    sent_at         timestamptz,
    CONSTRAINT saga_outbox_pkey PRIMARY KEY (event_id, created_at)
) PARTITION BY RANGE (created_at);

CREATE TABLE saga_outbox_default PARTITION OF saga_outbox DEFAULT;

-- The claim query ("due rows, oldest first, FOR UPDATE SKIP LOCKED"). Partial: SENT and
-- DEAD_LETTER rows, the vast majority, are not in it, so it stays tiny and hot.
CREATE INDEX saga_outbox_claimable ON saga_outbox (seq)
    WHERE status IN ('PENDING', 'FAILED');
-- Per-key order: an event is claimable only when no earlier event of its key is still unsent.
CREATE INDEX saga_outbox_unsent_key ON saga_outbox (aggregate_id, seq)
    WHERE status IN ('PENDING', 'FAILED', 'CLAIMED') AND aggregate_id IS NOT NULL;
-- Taking over claims of dead workers.
CREATE INDEX saga_outbox_claimed_until ON saga_outbox (claimed_until)
    WHERE status = 'CLAIMED';
CREATE INDEX saga_outbox_saga_id ON saga_outbox (saga_id) WHERE saga_id IS NOT NULL;

CREATE TABLE saga_audit_log (
    -- BY DEFAULT (not ALWAYS): maintenance re-inserts rows it moves out of the DEFAULT partition
    -- with their original ids.
    id         bigint      GENERATED BY DEFAULT AS IDENTITY,
    saga_id    uuid,
    event      text        NOT NULL,
    details    jsonb       NOT NULL DEFAULT '{}'::jsonb,
    created_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT saga_audit_log_pkey PRIMARY KEY (id, created_at)
) PARTITION BY RANGE (created_at);

CREATE TABLE saga_audit_log_default PARTITION OF saga_audit_log DEFAULT;

CREATE INDEX saga_audit_log_saga_id_created_at ON saga_audit_log (saga_id, created_at);

-- Consumer-side deduplication: "process an event once per consumer". Not partitioned: every
-- consume does a primary-key probe, which must not fan out over partitions. Old rows are deleted
-- in bulk by cleanup_consumer_inbox() (0002), which the processed_at index serves.
CREATE TABLE consumer_inbox (
    consumer_name text        NOT NULL,
    event_id      uuid        NOT NULL,
    processed_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT consumer_inbox_pkey PRIMARY KEY (consumer_name, event_id)
);

CREATE INDEX consumer_inbox_processed_at ON consumer_inbox (processed_at);
