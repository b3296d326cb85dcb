-- Named queries of the SQLite outbox (sagaz/storage/sqlite_outbox.py), the counterpart of the
-- outbox_* queries of postgresql/queries.sql: same states, same claim and backoff rules.
-- Times are Unix epoch seconds passed in as :now (the store's clock). Lists of ids are JSON
-- arrays (:ids), read with json_each. Publication order is the rowid.

-- name: claim
-- Due events, oldest first, plus events whose claim expired (their worker died between publish
-- and mark-sent: they are published again). Per-key order: an event is taken only when no
-- earlier event of its key is unsent. Runs in a write transaction (BEGIN IMMEDIATE), which
-- SQLite serializes across connections and processes: two relays never claim one row. A claim
-- counts no attempt (attempts counts failed deliveries only).
UPDATE saga_outbox
   SET status = 'CLAIMED', claimed_by = :worker, claimed_until = :now + :claim_seconds
 WHERE rowid IN (
        SELECT c.rowid
          FROM saga_outbox AS c
         WHERE ((c.status IN ('PENDING', 'FAILED') AND c.next_attempt_at <= :now)
                OR (c.status = 'CLAIMED' AND c.claimed_until < :now))
           -- Start at the oldest unsent event: without it the scan in rowid order reads every
           -- SENT row kept for the retention. INDEXED BY: left alone, min(rowid) walks the
           -- table from its first row (the SENT ones) instead of the small index of unsent rows.
           AND c.rowid >= (SELECT min(u.rowid) FROM saga_outbox AS u
                                  INDEXED BY saga_outbox_unsent_key
                            WHERE u.status IN ('PENDING', 'FAILED', 'CLAIMED'))
           AND (c.aggregate_id IS NULL OR NOT EXISTS (
                  SELECT 1 FROM saga_outbox AS e
                   WHERE e.aggregate_id = c.aggregate_id AND e.rowid < c.rowid
                     AND e.status IN ('PENDING', 'FAILED', 'CLAIMED')))
         ORDER BY c.rowid
         LIMIT :limit)
RETURNING event_id, event_type, aggregate_id, saga_id, payload, headers, created_at, attempts,
          rowid;

-- name: claim_ids
-- The optimistic send: claim exactly these just-committed events, if no worker took them yet and
-- no earlier event of their key is unsent (else the relay sends them, in order).
UPDATE saga_outbox AS o
   SET status = 'CLAIMED', claimed_by = :worker, claimed_until = :now + :claim_seconds
 WHERE o.event_id IN (SELECT value FROM json_each(:ids)) AND o.status = 'PENDING'
   AND (o.aggregate_id IS NULL OR NOT EXISTS (
          SELECT 1 FROM saga_outbox AS e
           WHERE e.aggregate_id = o.aggregate_id AND e.rowid < o.rowid
             AND e.status IN ('PENDING', 'FAILED', 'CLAIMED')))
RETURNING event_id, event_type, aggregate_id, saga_id, payload, headers, created_at, attempts,
          rowid;

-- name: mark_sent
-- Fenced by the claim: a worker whose claim expired and was taken over marks nothing.
UPDATE saga_outbox
   SET status = 'SENT', sent_at = :now, claimed_by = NULL, claimed_until = NULL,
       last_error = NULL
 WHERE event_id IN (SELECT value FROM json_each(:ids)) AND status = 'CLAIMED'
   AND claimed_by = :worker;

-- name: mark_failed
-- One more failed delivery: backoff base * 2^(attempts-1) with attempts counting this failure,
-- capped; DEAD_LETTER once attempts reach max_attempts. (SET expressions see the row before the
-- update: attempts excludes this failure.)
UPDATE saga_outbox
   SET attempts = attempts + 1,
       status = CASE WHEN attempts + 1 >= :max_attempts THEN 'DEAD_LETTER' ELSE 'FAILED' END,
       last_error = :error, claimed_by = NULL, claimed_until = NULL,
       next_attempt_at = :now + min(:max_backoff, :base_backoff * (1 << min(attempts, 60)))
 WHERE event_id = :event_id AND status = 'CLAIMED' AND claimed_by = :worker
RETURNING event_id, status;

-- name: release
-- Give claims back untouched (the broker connection was lost before publishing): no attempt
-- is counted against the events.
UPDATE saga_outbox
   SET status = 'PENDING', claimed_by = NULL, claimed_until = NULL
 WHERE event_id IN (SELECT value FROM json_each(:ids)) AND status = 'CLAIMED'
   AND claimed_by = :worker;

-- name: insert
-- Events published outside sagas; an event id already there is not added twice.
INSERT INTO saga_outbox (event_id, saga_id, event_type, aggregate_id, payload, headers,
                         next_attempt_at, created_at)
VALUES (:event_id, :saga_id, :event_type, :key, :payload, :headers, :now, :now)
ON CONFLICT (event_id) DO NOTHING;

-- name: dead_letters
SELECT event_id, event_type, aggregate_id, saga_id, attempts, last_error, created_at
  FROM saga_outbox
 WHERE status = 'DEAD_LETTER'
 ORDER BY rowid
 LIMIT :limit;

-- name: retry_dead
UPDATE saga_outbox
   SET status = 'PENDING', attempts = 0, next_attempt_at = :now, last_error = NULL
 WHERE status = 'DEAD_LETTER'
   AND (:ids IS NULL OR event_id IN (SELECT value FROM json_each(:ids)));

-- name: purge_dead
DELETE FROM saga_outbox
 WHERE status = 'DEAD_LETTER'
   AND (:ids IS NULL OR event_id IN (SELECT value FROM json_each(:ids)));

-- name: counts
SELECT status, count(*) FROM saga_outbox GROUP BY status;

-- name: backlog
-- The metrics' gauges, read on every scrape: events not sent yet, and dead letters.
SELECT (SELECT count(*) FROM saga_outbox WHERE status IN ('PENDING', 'FAILED', 'CLAIMED')),
       (SELECT count(*) FROM saga_outbox WHERE status = 'DEAD_LETTER');

-- name: delete_sent
-- Retention of SENT rows (PostgreSQL drops whole partitions instead). In slices, each its own
-- write transaction, so sagas committing meanwhile wait for one slice at most.
DELETE FROM saga_outbox
 WHERE rowid IN (SELECT rowid FROM saga_outbox
                  WHERE status = 'SENT' AND sent_at < :before
                  LIMIT :limit);
