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
                             updated_at, lease_owner, lease_expires_at, version)
SELECT u.saga_id, u.saga_name, u.status, u.context, u.idempotency_key, now(), now(),
       u.owner, now() + make_interval(secs => u.lease), 0
  FROM json_to_recordset(%(rows)s::json)
       AS u(saga_id uuid, saga_name text, status text, context jsonb, idempotency_key text,
            owner text, lease float8)
-- The existing ids are probed through each partition's primary-key index with the id array: a
-- join against the row set would be planned as a hash join over a sequential scan of every
-- partition (the planner cannot know the row set is small), costing a full scan per batch.
 WHERE u.saga_id <> ALL (ARRAY(SELECT s.saga_id FROM saga_executions AS s
                                WHERE s.saga_id = ANY(%(ids)s::uuid[])))
RETURNING saga_id::text, extract(epoch FROM created_at)::float8,
          extract(epoch FROM lease_expires_at)::float8;

-- name: commit_units
-- One statement for a whole batch of units of work: update the sagas (fenced: only while the
-- writer still holds the lease), then upsert the steps of exactly the sagas that were updated,
-- so a fenced-out writer changes nothing at all. Returns the ids that were updated.
WITH u AS (
    SELECT *
      FROM json_to_recordset(%(units)s::json)
           AS u(saga_id uuid, owner text, status text, context jsonb, failed_step text,
                error text, release bool, lease float8)
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
                                   ELSE now() + make_interval(secs => u.lease) END
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
)
SELECT saga_id::text FROM updated;

-- name: existing_saga_ids
SELECT saga_id::text FROM saga_executions WHERE saga_id = ANY(%(ids)s::uuid[]);

-- name: select_sagas
SELECT saga_id::text, saga_name, status, context::text, failed_step, error, idempotency_key,
       extract(epoch FROM created_at)::float8, extract(epoch FROM updated_at)::float8,
       lease_owner, extract(epoch FROM lease_expires_at)::float8, version
  FROM saga_executions
 WHERE saga_id = ANY(%(ids)s::uuid[]);

-- name: select_steps
SELECT saga_id::text, step_name, status, result::text, error, attempts,
       extract(epoch FROM started_at)::float8, extract(epoch FROM finished_at)::float8,
       compensation_error
  FROM saga_steps
 WHERE saga_id = ANY(%(ids)s::uuid[]);

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

-- name: list_sagas
SELECT saga_id::text, saga_name, status, context::text, failed_step, error, idempotency_key,
       extract(epoch FROM created_at)::float8, extract(epoch FROM updated_at)::float8,
       lease_owner, extract(epoch FROM lease_expires_at)::float8, version
  FROM saga_executions
 WHERE (%(status)s::text IS NULL OR status = %(status)s::text)
 ORDER BY created_at DESC
 LIMIT %(limit)s OFFSET %(offset)s;

-- name: count_by_status
SELECT status, count(*) FROM saga_executions GROUP BY status;

-- name: current_lsn
-- On a primary: past every commit acknowledged so far. On a replica: how far it has replayed.
SELECT (CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn()
             ELSE pg_current_wal_lsn() END)::text;

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
