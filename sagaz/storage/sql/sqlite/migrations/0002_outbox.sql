-- The transactional outbox of the embedded storage: events written in the transaction of the
-- saga state change that emitted them, relayed to the broker by the outbox worker. Same columns
-- and status lifecycle as PostgreSQL's saga_outbox (not partitioned here: the embedded storage
-- deletes SENT rows past retention instead).

CREATE TABLE saga_outbox (
    event_id        TEXT PRIMARY KEY,
    saga_id         TEXT,
    event_type      TEXT NOT NULL,
    aggregate_id    TEXT,
    payload         TEXT NOT NULL,
    headers         TEXT NOT NULL DEFAULT '{}',
    status          TEXT NOT NULL DEFAULT 'PENDING' CHECK (status IN
                        ('PENDING', 'CLAIMED', 'SENT', 'FAILED', 'DEAD_LETTER')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    last_error      TEXT,
    next_attempt_at REAL NOT NULL,
    claimed_by      TEXT,
    claimed_until   REAL,
    created_at      REAL NOT NULL,
    sent_at         REAL
);

CREATE INDEX saga_outbox_claimable ON saga_outbox (next_attempt_at)
    WHERE status IN ('PENDING', 'FAILED');
CREATE INDEX saga_outbox_claimed_until ON saga_outbox (claimed_until) WHERE status = 'CLAIMED';
