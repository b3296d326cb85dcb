-- Named queries of the PostgreSQL storage. Each starts with a "-- name:" line.
-- All of them are batch statements over arrays (unnest), so that one round trip serves the
-- writes of many concurrent sagas (group commit). They use no session state and no prepared
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
INSERT INTO saga_executions (saga_id, saga_name, status, context, idempotency_key, created_at,
                             updated_at, lease_owner, lease_expires_at, version)
SELECT u.saga_id, u.saga_name, u.status, u.context::jsonb, u.idempotency_key, now(), now(),
       u.owner, now() + make_interval(secs => u.lease), 0
  FROM unnest(%(ids)s::uuid[], %(names)s::text[], %(statuses)s::text[], %(contexts)s::text[],
              %(keys)s::text[], %(owners)s::text[], %(leases)s::float8[])
       AS u(saga_id, saga_name, status, context, idempotency_key, owner, lease)
 WHERE NOT EXISTS (SELECT 1 FROM saga_executions AS s WHERE s.saga_id = u.saga_id)
RETURNING saga_id::text, extract(epoch FROM created_at)::float8,
          extract(epoch FROM lease_expires_at)::float8;

-- name: update_sagas
-- Fenced: a row is only updated while the writer still holds its lease.
UPDATE saga_executions AS s
   SET status = COALESCE(u.status, s.status),
       context = COALESCE(u.context::jsonb, s.context),
       failed_step = COALESCE(u.failed_step, s.failed_step),
       error = COALESCE(u.error, s.error),
       updated_at = now(),
       version = s.version + 1,
       lease_owner = CASE WHEN u.release THEN NULL ELSE s.lease_owner END,
       lease_expires_at = CASE WHEN u.release THEN NULL
                               ELSE now() + make_interval(secs => u.lease) END
  FROM unnest(%(ids)s::uuid[], %(owners)s::text[], %(statuses)s::text[], %(contexts)s::text[],
              %(failed)s::text[], %(errors)s::text[], %(releases)s::bool[], %(leases)s::float8[])
       AS u(saga_id, owner, status, context, failed_step, error, release, lease)
 WHERE s.saga_id = u.saga_id AND s.lease_owner = u.owner
RETURNING s.saga_id::text;

-- name: existing_saga_ids
SELECT saga_id::text FROM saga_executions WHERE saga_id = ANY(%(ids)s::uuid[]);

-- name: upsert_steps
INSERT INTO saga_steps (saga_id, step_name, status, result, error, attempts, started_at,
                        finished_at, compensation_error)
SELECT u.saga_id, u.step_name, u.status, u.result::jsonb, u.error, u.attempts,
       to_timestamp(u.started_at), to_timestamp(u.finished_at), u.compensation_error
  FROM unnest(%(ids)s::uuid[], %(names)s::text[], %(statuses)s::text[], %(results)s::text[],
              %(errors)s::text[], %(attempts)s::int[], %(started)s::float8[],
              %(finished)s::float8[], %(comp_errors)s::text[])
       AS u(saga_id, step_name, status, result, error, attempts, started_at, finished_at,
            compensation_error)
ON CONFLICT (saga_id, step_name) DO UPDATE
   SET status = excluded.status,
       result = excluded.result,
       error = excluded.error,
       attempts = excluded.attempts,
       started_at = excluded.started_at,
       finished_at = excluded.finished_at,
       compensation_error = excluded.compensation_error;

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
