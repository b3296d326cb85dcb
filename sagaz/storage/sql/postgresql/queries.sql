-- Named queries of the PostgreSQL storage. Each starts with a "-- name:" line.
-- The writes are batch statements over JSON row sets or arrays, so that one round trip serves
-- the writes of many concurrent sagas (group commit). They use no session state and no prepared
-- statements, so they run unchanged through PgBouncer in transaction mode.

-- name: lock_saga_ids
-- saga_executions is partitioned on created_at, so its primary key (saga_id, created_at) cannot
-- make saga_id unique by itself. Creates serialise per id on a transaction-scoped advisory lock
-- (fine through PgBouncer), taken in sorted order so two batches never deadlock.
SELECT pg_advisory_xact_lock(k)
  FROM (SELECT DISTINCT hashtextextended(id::text, 0) AS k
          FROM unnest(%(ids)s::uuid[]) AS id
         ORDER BY 1) AS keys;

-- name: insert_sagas
-- Rows come as one JSON array (json_to_recordset): far cheaper to build client-side than one
-- array parameter per column, and the context travels as a nested object, not re-encoded text.
INSERT INTO saga_executions (saga_id, saga_name, status, context, idempotency_key, created_at,
                             updated_at, lease_owner, lease_expires_at, version,
                             definition_fingerprint, definition_version)
SELECT u.saga_id, u.saga_name, u.status, u.context, u.idempotency_key, now(), now(),
       u.owner, now() + make_interval(secs => u.lease), 0, u.fingerprint, u.definition_version
  FROM json_to_recordset(%(rows)s::json)
       AS u(saga_id uuid, saga_name text, status text, context jsonb, idempotency_key text,
            owner text, lease float8, fingerprint text, definition_version text)
-- The existing ids are probed through each partition's primary-key index with the id array: a
-- join against the row set would be planned as a hash join over a sequential scan of every
-- partition (the planner cannot know the row set is small), costing a full scan per batch.
 WHERE u.saga_id <> ALL (ARRAY(SELECT s.saga_id FROM saga_executions AS s
                                WHERE s.saga_id = ANY(%(ids)s::uuid[])))
RETURNING saga_id::text, extract(epoch FROM created_at)::float8,
          extract(epoch FROM lease_expires_at)::float8;

-- name: commit_units
-- One statement for a whole batch of units of work: update the sagas (fenced: only while the
-- writer still holds the lease), then upsert the steps and insert the outbox events and audit
-- rows of exactly the sagas that were updated, so a fenced-out writer changes nothing at all.
-- Returns the ids that were updated.
WITH u AS (
    SELECT *
      FROM json_to_recordset(%(units)s::json)
           AS u(saga_id uuid, owner text, status text, context jsonb, failed_step text,
                error text, release bool, lease float8, wake_at float8, seen_seq bigint)
), updated AS (
    UPDATE saga_executions AS s
       SET status = COALESCE(u.status, s.status),
           context = COALESCE(u.context, s.context),
           failed_step = COALESCE(u.failed_step, s.failed_step),
           error = COALESCE(u.error, s.error),
           updated_at = now(),
           version = s.version + 1,
           lease_owner = CASE WHEN u.release THEN NULL ELSE s.lease_owner END,
           lease_expires_at = CASE WHEN u.release THEN NULL
                                   ELSE now() + make_interval(secs => u.lease) END,
           -- Parking: a signal that arrived since the executor looked (the counter moved; the
           -- row is re-read after a concurrent signal's lock) makes the saga due at once. Any
           -- other status change ends the wait.
           wake_at = CASE WHEN u.status = 'WAITING' THEN
                              CASE WHEN s.signal_seq <> u.seen_seq THEN to_timestamp(0)
                                   ELSE to_timestamp(u.wake_at) END
                          WHEN u.status IS NULL THEN s.wake_at
                          ELSE NULL END
      FROM u
     -- The id array and the creation-time bounds (NULL when unknown) let the planner probe
     -- the primary-key index of only the partitions the batch's sagas live in; see
     -- insert_sagas for why the join alone is not enough.
     WHERE s.saga_id = ANY(%(ids)s::uuid[])
       AND (%(created_from)s::float8 IS NULL
            OR s.created_at >= to_timestamp(%(created_from)s::float8))
       AND (%(created_to)s::float8 IS NULL
            OR s.created_at <= to_timestamp(%(created_to)s::float8))
       AND s.saga_id = u.saga_id AND s.lease_owner = u.owner
    RETURNING s.saga_id
), steps AS (
    INSERT INTO saga_steps (saga_id, step_name, status, result, error, attempts, started_at,
                            finished_at, compensation_error)
    SELECT x.saga_id, x.step_name, x.status, x.result, x.error, x.attempts,
           to_timestamp(x.started_at), to_timestamp(x.finished_at), x.compensation_error
      FROM json_to_recordset(%(steps)s::json)
           AS x(saga_id uuid, step_name text, status text, result jsonb, error text,
                attempts int, started_at float8, finished_at float8, compensation_error text)
     WHERE x.saga_id IN (SELECT saga_id FROM updated)
    ON CONFLICT (saga_id, step_name) DO UPDATE
       SET status = excluded.status,
           result = excluded.result,
           error = excluded.error,
           attempts = excluded.attempts,
           started_at = excluded.started_at,
           finished_at = excluded.finished_at,
           compensation_error = excluded.compensation_error
), events AS (
    -- The events the units emitted, in the same transaction and fenced the same way.
    INSERT INTO saga_outbox (event_id, saga_id, event_type, aggregate_id, payload, headers)
    SELECT e.event_id, e.saga_id, e.event_type, e.key, e.payload, e.headers
      FROM json_to_recordset(%(events)s::json)
           AS e(event_id uuid, saga_id uuid, event_type text, key text, payload jsonb,
                headers jsonb)
     WHERE e.saga_id IN (SELECT saga_id FROM updated)
       -- A batch sent again after a lost COMMIT outcome must not insert its events twice (the
       -- key includes created_at, so the primary key would not stop it). Checked only then:
       -- the probe costs an index lookup per partition.
       AND (NOT %(dedupe_events)s OR NOT EXISTS (
              SELECT 1 FROM saga_outbox AS o WHERE o.event_id = e.event_id))
), audit AS (
    -- The units' history (sagaz/storage/audit.py). In array order (ordinality): the identity
    -- then orders a saga's rows as they happened. created_at is when it happened (a failed
    -- attempt, before this commit) or else the commit.
    INSERT INTO saga_audit_log (saga_id, event, details, created_at)
    SELECT a.saga_id, a.event, a.details, COALESCE(to_timestamp(a.at), now())
      FROM ROWS FROM (json_to_recordset(%(audit)s::json)
                      AS (saga_id uuid, event text, details jsonb, at float8))
           WITH ORDINALITY AS a(saga_id, event, details, at, n)
     WHERE a.saga_id IN (SELECT saga_id FROM updated)
       -- Sent again after a lost COMMIT outcome: the rows that did commit are not added twice.
       AND (NOT %(dedupe_events)s OR NOT EXISTS (
              SELECT 1 FROM saga_audit_log AS l
               WHERE l.saga_id = a.saga_id AND l.event = a.event AND l.details = a.details
                 AND (a.at IS NULL OR l.created_at = to_timestamp(a.at))))
     ORDER BY a.n
), consumed AS (
    -- Signals the units' waits consumed.
    UPDATE saga_signals AS g SET consumed_at = now()
      FROM json_to_recordset(%(consumed)s::json) AS c(saga_id uuid, signal_id text)
     WHERE g.saga_id = c.saga_id AND g.signal_id = c.signal_id
       AND c.saga_id IN (SELECT saga_id FROM updated)
), forgotten AS (
    -- A finished saga's signals: nothing will consume them any more.
    DELETE FROM saga_signals AS g
     WHERE g.saga_id = ANY(%(forget)s::uuid[]) AND g.saga_id IN (SELECT saga_id FROM updated)
)
SELECT saga_id::text FROM updated;

-- name: existing_saga_ids
SELECT saga_id::text FROM saga_executions WHERE saga_id = ANY(%(ids)s::uuid[]);

-- name: select_sagas
SELECT saga_id::text, saga_name, status, context::text, failed_step, error, idempotency_key,
       extract(epoch FROM created_at)::float8, extract(epoch FROM updated_at)::float8,
       lease_owner, extract(epoch FROM lease_expires_at)::float8, version,
       definition_fingerprint, definition_version, cancel_requested::text,
       extract(epoch FROM wake_at)::float8, signal_seq
  FROM saga_executions
 WHERE saga_id = ANY(%(ids)s::uuid[]);

-- name: select_steps
SELECT saga_id::text, step_name, status, result::text, error, attempts,
       extract(epoch FROM started_at)::float8, extract(epoch FROM finished_at)::float8,
       compensation_error
  FROM saga_steps
 WHERE saga_id = ANY(%(ids)s::uuid[]);

-- name: saga_history
-- One probe of the (saga_id, created_at) index per partition; the identity orders the rows.
SELECT event, details::text, extract(epoch FROM created_at)::float8
  FROM saga_audit_log
 WHERE saga_id = %(saga_id)s::uuid
 ORDER BY id;

-- name: renew_leases
UPDATE saga_executions
   SET lease_expires_at = now() + make_interval(secs => %(lease)s)
 WHERE saga_id = ANY(%(ids)s::uuid[]) AND lease_owner = %(owner)s
RETURNING saga_id::text;

-- name: claim_expired
-- SKIP LOCKED: concurrent recoverers each take different sagas instead of queueing.
UPDATE saga_executions AS s
   SET lease_owner = %(owner)s,
       lease_expires_at = now() + make_interval(secs => %(lease)s)
  FROM (SELECT saga_id, created_at
          FROM saga_executions
         WHERE lease_expires_at < now()
           AND status IN ('PENDING', 'RUNNING', 'COMPENSATING')
         ORDER BY lease_expires_at
         LIMIT %(limit)s
           FOR UPDATE SKIP LOCKED) AS expired
 WHERE s.saga_id = expired.saga_id AND s.created_at = expired.created_at
RETURNING s.saga_id::text;

-- name: select_signals
-- The signals not consumed yet of unfinished sagas, oldest first.
SELECT saga_id::text, signal_id, name, payload::text, extract(epoch FROM created_at)::float8
  FROM saga_signals
 WHERE saga_id = ANY(%(ids)s::uuid[]) AND consumed_at IS NULL
 ORDER BY seq;

-- name: lock_saga_status
-- A signal serialises with the saga's commits on its row: a park committed before it is seen
-- WAITING here; a park after it sees the moved counter (commit_units).
SELECT status FROM saga_executions WHERE saga_id = %(saga_id)s::uuid FOR UPDATE;

-- name: insert_signal
INSERT INTO saga_signals (saga_id, signal_id, name, payload)
VALUES (%(saga_id)s::uuid, %(signal_id)s, %(name)s, %(payload)s::jsonb)
ON CONFLICT (saga_id, signal_id) DO NOTHING
RETURNING seq;

-- name: count_signal
-- A parked saga becomes due at once (the epoch is before any clock).
UPDATE saga_executions
   SET signal_seq = signal_seq + 1,
       wake_at = CASE WHEN status = 'WAITING' THEN to_timestamp(0) ELSE wake_at END
 WHERE saga_id = %(saga_id)s::uuid;

-- name: claim_due
-- The one query per worker interval: the partial index saga_executions_wake_at holds only
-- parked sagas, so it costs the same with 10 or 100,000 of them. SKIP LOCKED: concurrent
-- workers take different sagas. Timers are on the engine's clock (%(now)s); leases on the
-- server's.
UPDATE saga_executions AS s
   SET lease_owner = %(owner)s,
       lease_expires_at = now() + make_interval(secs => %(lease)s)
  FROM (SELECT saga_id, created_at
          FROM saga_executions
         WHERE status = 'WAITING' AND wake_at <= to_timestamp(%(now)s)
           AND (%(saga_id)s::uuid IS NULL OR saga_id = %(saga_id)s::uuid)
           AND (lease_owner IS NULL OR lease_expires_at < now())
         ORDER BY wake_at
         LIMIT %(limit)s
           FOR UPDATE SKIP LOCKED) AS due
 WHERE s.saga_id = due.saga_id AND s.created_at = due.created_at
RETURNING s.saga_id::text;

-- name: list_sagas
SELECT saga_id::text, saga_name, status, context::text, failed_step, error, idempotency_key,
       extract(epoch FROM created_at)::float8, extract(epoch FROM updated_at)::float8,
       lease_owner, extract(epoch FROM lease_expires_at)::float8, version,
       definition_fingerprint, definition_version, cancel_requested::text,
       extract(epoch FROM wake_at)::float8, signal_seq
  FROM saga_executions
 WHERE (%(status)s::text IS NULL OR status = %(status)s::text)
 ORDER BY created_at DESC
 LIMIT %(limit)s OFFSET %(offset)s;

-- name: count_by_status
SELECT status, count(*) FROM saga_executions GROUP BY status;

-- name: notify_outbox
-- Wakes outbox workers listening on a direct connection; delivered at commit, and only if the
-- transaction commits. Several in one transaction are folded into one notification.
SELECT pg_notify('sagaz_outbox', '');

-- name: current_lsn
-- On a primary: past every commit acknowledged so far (the insert position: with
-- synchronous_commit off the write position may still be behind an acknowledged commit). On a
-- replica: how far it has replayed.
SELECT (CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn()
             ELSE pg_current_wal_insert_lsn() END)::text;

-- name: replayed_past
-- True on a primary (it has everything), or on a replica that has replayed past %(lsn)s.
SELECT NOT pg_is_in_recovery() OR pg_last_wal_replay_lsn() >= %(lsn)s::pg_lsn;


-- Maintenance (sagaz db, sagaz worker)
-- Run by sagaz/storage/postgresql/maintenance.py on short-lived connections, not the storage's
-- pool. The work is done by the functions of migration 0002; these only call them.

-- name: maintenance_lock_timeout
-- is_local => true: the setting ends with the transaction, so it never leaks into a server
-- connection PgBouncer (transaction mode) hands to another client.
SELECT set_config('lock_timeout', %(timeout)s::text, true);

-- name: maintenance_tables
SELECT table_name FROM sagaz_partition_settings ORDER BY table_name;

-- name: maintain_partitions
SELECT table_name, action, partition_name, detail FROM maintain_all_partitions(%(table)s::text);

-- name: partition_statistics
-- Infinite bounds (MINVALUE/MAXVALUE partitions made by hand) come back as NULL: Python's datetime
-- cannot hold them. DEFAULT partitions are the ones without any bound.
SELECT table_name, partition_name,
       CASE WHEN isfinite(range_start) THEN range_start END,
       CASE WHEN isfinite(range_end) THEN range_end END,
       range_start IS NULL AND range_end IS NULL,
       row_count, total_bytes
  FROM get_partition_statistics(%(exact)s::boolean);

-- name: cleanup_consumer_inbox
SELECT cleanup_consumer_inbox(%(days)s::integer);

-- Outbox relay (sagaz.outbox.worker), consumer inbox

-- name: outbox_claim
-- Due events, oldest first, skipping rows other workers hold (SKIP LOCKED), plus events whose
-- claim expired (their worker died between publish and mark-sent: they are published again).
-- Per-key order: an event is taken only when no earlier event of its key is unsent, so at most
-- one event per key is in flight and a key's events leave in order. A claim counts no attempt:
-- attempts counts failed deliveries (outbox_mark_failed), so relay crashes never dead-letter.
UPDATE saga_outbox AS o
   SET status = 'CLAIMED', claimed_by = %(worker)s,
       claimed_until = now() + make_interval(secs => %(claim_seconds)s)
  FROM (SELECT c.event_id, c.created_at
          FROM saga_outbox AS c
         WHERE ((c.status IN ('PENDING', 'FAILED') AND c.next_attempt_at <= now())
                OR (c.status = 'CLAIMED' AND c.claimed_until < now()))
           AND (c.aggregate_id IS NULL OR NOT EXISTS (
                  SELECT 1 FROM saga_outbox AS e
                   WHERE e.aggregate_id = c.aggregate_id AND e.seq < c.seq
                     AND e.status IN ('PENDING', 'FAILED', 'CLAIMED')))
         ORDER BY c.seq
         LIMIT %(limit)s
           FOR UPDATE SKIP LOCKED) AS picked
 WHERE o.event_id = picked.event_id AND o.created_at = picked.created_at
RETURNING o.event_id::text, o.event_type, o.aggregate_id, o.saga_id::text, o.payload::text,
          o.headers::text, extract(epoch FROM o.created_at)::float8, o.attempts, o.seq;

-- name: outbox_mark_sent
-- Fenced by the claim: a worker whose claim expired and was taken over marks nothing.
UPDATE saga_outbox
   SET status = 'SENT', sent_at = now(), claimed_by = NULL, claimed_until = NULL,
       last_error = NULL
 WHERE event_id = ANY(%(ids)s::uuid[]) AND status = 'CLAIMED' AND claimed_by = %(worker)s;

-- name: outbox_mark_failed
-- One more failed delivery: exponential backoff per event (not per poll), base * 2^(attempts-1)
-- with attempts counting this failure, capped; DEAD_LETTER once attempts reach max_attempts.
-- (The SET expressions see the row before the update: o.attempts excludes this failure.)
UPDATE saga_outbox AS o
   SET attempts = o.attempts + 1,
       status = CASE WHEN o.attempts + 1 >= %(max_attempts)s THEN 'DEAD_LETTER' ELSE 'FAILED' END,
       last_error = f.error, claimed_by = NULL, claimed_until = NULL,
       next_attempt_at = now() + make_interval(secs => least(
           %(max_backoff)s::float8, %(base_backoff)s::float8 * power(2, least(o.attempts, 60))))
  FROM unnest(%(ids)s::uuid[], %(errors)s::text[]) AS f(event_id, error)
 WHERE o.event_id = f.event_id AND o.status = 'CLAIMED' AND o.claimed_by = %(worker)s
RETURNING o.event_id::text, o.status;

-- name: outbox_release
-- Give claims back untouched (the broker connection was lost before publishing): no attempt
-- is counted against the events.
UPDATE saga_outbox
   SET status = 'PENDING', claimed_by = NULL, claimed_until = NULL
 WHERE event_id = ANY(%(ids)s::uuid[]) AND status = 'CLAIMED' AND claimed_by = %(worker)s;

-- name: outbox_insert
-- Retried after a lost COMMIT outcome, the insert must not add the events twice.
INSERT INTO saga_outbox (event_id, saga_id, event_type, aggregate_id, payload, headers)
SELECT e.event_id, e.saga_id, e.event_type, e.key, e.payload, e.headers
  FROM json_to_recordset(%(events)s::json)
       AS e(event_id uuid, saga_id uuid, event_type text, key text, payload jsonb,
            headers jsonb)
 WHERE NOT EXISTS (SELECT 1 FROM saga_outbox AS o WHERE o.event_id = e.event_id);

-- name: outbox_dead_letters
SELECT event_id::text, event_type, aggregate_id, saga_id::text, attempts, last_error,
       extract(epoch FROM created_at)::float8
  FROM saga_outbox
 WHERE status = 'DEAD_LETTER'
 ORDER BY seq
 LIMIT %(limit)s;

-- name: outbox_retry_dead
UPDATE saga_outbox
   SET status = 'PENDING', attempts = 0, next_attempt_at = now(), last_error = NULL
 WHERE status = 'DEAD_LETTER' AND (%(ids)s::uuid[] IS NULL OR event_id = ANY(%(ids)s::uuid[]));

-- name: outbox_purge_dead
DELETE FROM saga_outbox
 WHERE status = 'DEAD_LETTER' AND (%(ids)s::uuid[] IS NULL OR event_id = ANY(%(ids)s::uuid[]));

-- name: outbox_counts
SELECT status, count(*) FROM saga_outbox GROUP BY status;

-- name: outbox_backlog
-- The metrics' gauges, read on every scrape: each count stays within a partial index (the
-- claimable, claimed and dead-letter ones), never touching the SENT rows, the vast majority.
SELECT (SELECT count(*) FROM saga_outbox WHERE status IN ('PENDING', 'FAILED'))
       + (SELECT count(*) FROM saga_outbox WHERE status = 'CLAIMED') AS pending,
       (SELECT count(*) FROM saga_outbox WHERE status = 'DEAD_LETTER') AS dead_letter;

-- name: ping
SELECT 1;

-- name: outbox_claim_ids
-- The optimistic send: claim exactly these just-committed events, if no worker took them yet and
-- no earlier event of their key is unsent (else the relay sends them, in order).
UPDATE saga_outbox AS o
   SET status = 'CLAIMED', claimed_by = %(worker)s,
       claimed_until = now() + make_interval(secs => %(claim_seconds)s)
 WHERE o.event_id = ANY(%(ids)s::uuid[]) AND o.status = 'PENDING'
   AND (o.aggregate_id IS NULL OR NOT EXISTS (
          SELECT 1 FROM saga_outbox AS e
           WHERE e.aggregate_id = o.aggregate_id AND e.seq < o.seq
             AND e.status IN ('PENDING', 'FAILED', 'CLAIMED')))
RETURNING o.event_id::text, o.event_type, o.aggregate_id, o.saga_id::text, o.payload::text,
          o.headers::text, extract(epoch FROM o.created_at)::float8, o.attempts, o.seq;

-- name: inbox_record_many
-- The consumer's dedup rows, in the transaction of the handlers' own writes: they commit with
-- them or not at all. Returns the ids this consumer sees for the first time.
INSERT INTO consumer_inbox (consumer_name, event_id)
SELECT %(consumer)s, id FROM unnest(%(event_ids)s::uuid[]) AS id
ON CONFLICT DO NOTHING
RETURNING event_id::text;

-- Restore drill (`sagaz backup verify`): what a restored database holds.

-- name: restore_drill_counts
SELECT 'saga_executions', count(*) FROM saga_executions
UNION ALL SELECT 'saga_steps', count(*) FROM saga_steps
UNION ALL SELECT 'saga_outbox', count(*) FROM saga_outbox
UNION ALL SELECT 'saga_audit_log', count(*) FROM saga_audit_log
UNION ALL SELECT 'consumer_inbox', count(*) FROM consumer_inbox;

-- name: restore_drill_newest_saga
SELECT extract(epoch FROM max(updated_at))::float8 FROM saga_executions;

-- name: insert_definition
INSERT INTO saga_definitions (fingerprint, saga_name, version, shape)
VALUES (%(fingerprint)s, %(saga_name)s, %(version)s, %(shape)s::jsonb)
ON CONFLICT (fingerprint) DO NOTHING;

-- name: select_definition
SELECT shape::text FROM saga_definitions WHERE fingerprint = %(fingerprint)s;

-- name: lock_saga_lease
-- An operator verb's seizure (sagaz/storage/control.py) reads the lease under a row lock, then
-- decides and updates in the same transaction: an executor's commit waits for it, then finds
-- the lease gone.
SELECT status, lease_owner, extract(epoch FROM lease_expires_at)::float8,
       extract(epoch FROM now())::float8, created_at
  FROM saga_executions
 WHERE saga_id = %(saga_id)s::uuid
   FOR UPDATE;

-- name: seize_saga
UPDATE saga_executions
   SET lease_owner = %(owner)s,
       lease_expires_at = CASE
           WHEN %(keep_live_expiry)s AND lease_expires_at >= now() THEN lease_expires_at
           WHEN %(hand_off)s THEN now()
           ELSE now() + make_interval(secs => %(lease)s) END,
       cancel_requested = COALESCE(%(cancel)s::jsonb, cancel_requested),
       definition_fingerprint = COALESCE(%(fingerprint)s::text, definition_fingerprint),
       definition_version = CASE WHEN %(fingerprint)s::text IS NULL THEN definition_version
                                 ELSE %(definition_version)s::text END,
       updated_at = now(),
       version = version + 1
 WHERE saga_id = %(saga_id)s::uuid AND created_at = %(created_at)s;

-- name: insert_audit_row
INSERT INTO saga_audit_log (saga_id, event, details)
VALUES (%(saga_id)s::uuid, %(event)s, %(details)s::jsonb);

-- name: release_fenced
-- The executor a cancel fenced has stopped: the lease left to run out for it ends now.
UPDATE saga_executions SET lease_expires_at = now()
 WHERE saga_id = %(saga_id)s::uuid AND cancel_requested ->> 'fenced' = %(owner)s
   AND status NOT IN ('COMPLETED', 'COMPENSATED', 'FAILED', 'COMPENSATING')
   AND lease_expires_at > now();

-- name: release_claim
UPDATE saga_executions SET lease_owner = NULL
 WHERE saga_id = %(saga_id)s::uuid AND lease_owner = %(owner)s;
