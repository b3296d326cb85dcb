-- What the relay of the embedded outbox needs (sagaz/storage/sqlite_outbox.py): claims keep the
-- per-key order by looking for an earlier unsent event of the same key, and the retention of
-- SENT rows deletes by sent_at. Publication order is the rowid (insertion order, which is commit
-- order: SQLite has one writer at a time).

CREATE INDEX saga_outbox_unsent_key ON saga_outbox (aggregate_id)
    WHERE status IN ('PENDING', 'FAILED', 'CLAIMED');
CREATE INDEX saga_outbox_sent_at ON saga_outbox (sent_at) WHERE status = 'SENT';
CREATE INDEX saga_outbox_dead ON saga_outbox (status) WHERE status = 'DEAD_LETTER';
