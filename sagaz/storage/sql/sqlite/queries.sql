-- Named queries of the SQLite storage. Each starts with a "-- name:" line.

-- name: create_migrations_table
CREATE TABLE IF NOT EXISTS sagaz_migrations (
    version    INTEGER PRIMARY KEY,
    name       TEXT NOT NULL,
    applied_at REAL NOT NULL
);

-- name: applied_migrations
SELECT version FROM sagaz_migrations ORDER BY version;

-- name: record_migration
INSERT INTO sagaz_migrations (version, name, applied_at) VALUES (:version, :name, :now);

-- name: insert_saga
INSERT INTO saga_executions (saga_id, saga_name, status, context, idempotency_key, created_at,
                             updated_at, lease_owner, lease_expires_at, definition_fingerprint,
                             definition_version)
VALUES (:saga_id, :saga_name, :status, :context, :idempotency_key, :now, :now, :owner, :expires,
        :fingerprint, :definition_version)
ON CONFLICT (saga_id) DO NOTHING;

-- name: update_saga
-- Fenced: only the lease holder may write. Zero rows updated means the lease was lost.
UPDATE saga_executions
   SET status = COALESCE(:status, status),
       context = COALESCE(:context, context),
       failed_step = COALESCE(:failed_step, failed_step),
       error = COALESCE(:error, error),
       updated_at = :now,
       version = version + 1,
       lease_owner = CASE WHEN :release THEN NULL ELSE lease_owner END,
       lease_expires_at = CASE WHEN :release THEN NULL ELSE :expires END,
       -- Parking: a signal that arrived since the executor looked (the counter moved) makes the
       -- saga due at once. Any other status change ends the wait.
       wake_at = CASE WHEN :status = 'WAITING' THEN
                          CASE WHEN signal_seq <> :seen_signal_seq THEN 0 ELSE :wake_at END
                      WHEN :status IS NULL THEN wake_at
                      ELSE NULL END
 WHERE saga_id = :saga_id AND lease_owner = :owner;

-- name: upsert_step
INSERT INTO saga_steps (saga_id, step_name, status, result, error, attempts, started_at,
                        finished_at, compensation_error)
VALUES (:saga_id, :step_name, :status, :result, :error, :attempts, :started_at, :finished_at,
        :compensation_error)
ON CONFLICT (saga_id, step_name) DO UPDATE
   SET status = excluded.status,
       result = excluded.result,
       error = excluded.error,
       attempts = excluded.attempts,
       started_at = excluded.started_at,
       finished_at = excluded.finished_at,
       compensation_error = excluded.compensation_error;

-- name: saga_exists
SELECT 1 FROM saga_executions WHERE saga_id = :saga_id;

-- name: select_saga
SELECT saga_id, saga_name, status, context, failed_step, error, idempotency_key, created_at,
       updated_at, lease_owner, lease_expires_at, version, definition_fingerprint,
       definition_version, cancel_requested, wake_at, signal_seq
  FROM saga_executions
 WHERE saga_id = :saga_id;

-- name: select_steps
SELECT step_name, status, result, error, attempts, started_at, finished_at, compensation_error
  FROM saga_steps
 WHERE saga_id = :saga_id;

-- name: renew_lease
UPDATE saga_executions SET lease_expires_at = :expires
 WHERE saga_id = :saga_id AND lease_owner = :owner;

-- name: claim_expired
UPDATE saga_executions
   SET lease_owner = :owner, lease_expires_at = :expires
 WHERE saga_id IN (SELECT saga_id FROM saga_executions
                    WHERE lease_expires_at < :now
                      AND status IN ('PENDING', 'RUNNING', 'COMPENSATING')
                    ORDER BY lease_expires_at
                    LIMIT :limit)
RETURNING saga_id;

-- name: list_sagas
SELECT saga_id, saga_name, status, context, failed_step, error, idempotency_key, created_at,
       updated_at, lease_owner, lease_expires_at, version, definition_fingerprint,
       definition_version, cancel_requested, wake_at, signal_seq
  FROM saga_executions
 WHERE (:status IS NULL OR status = :status)
 ORDER BY created_at DESC
 LIMIT :limit OFFSET :offset;

-- name: count_by_status
SELECT status, count(*) FROM saga_executions GROUP BY status;

-- name: insert_event
INSERT INTO saga_outbox (event_id, saga_id, event_type, aggregate_id, payload, headers,
                         next_attempt_at, created_at)
VALUES (:event_id, :saga_id, :event_type, :key, :payload, :headers, :now, :now);

-- name: insert_audit
-- created_at: when it happened (a failed attempt) or else the commit time.
INSERT INTO saga_audit_log (saga_id, event, details, created_at)
VALUES (:saga_id, :event, :details, COALESCE(:at, :now));

-- name: saga_history
SELECT event, details, created_at FROM saga_audit_log WHERE saga_id = :saga_id ORDER BY id;

-- name: insert_definition
INSERT INTO saga_definitions (fingerprint, saga_name, version, shape, recorded_at)
VALUES (:fingerprint, :saga_name, :version, :shape, :now)
ON CONFLICT (fingerprint) DO NOTHING;

-- name: select_definition
SELECT shape FROM saga_definitions WHERE fingerprint = :fingerprint;

-- name: lease_of
SELECT status, lease_owner, lease_expires_at FROM saga_executions WHERE saga_id = :saga_id;

-- name: seize_saga
-- An operator verb takes the saga's lease (see sagaz/storage/control.py); the statement runs
-- in the write transaction that read lease_of, so nothing changes in between.
UPDATE saga_executions
   SET lease_owner = :owner,
       lease_expires_at = CASE
           WHEN :keep_live_expiry AND lease_expires_at >= :now THEN lease_expires_at
           WHEN :hand_off THEN :now
           ELSE :expires END,
       cancel_requested = COALESCE(:cancel, cancel_requested),
       definition_fingerprint = COALESCE(:fingerprint, definition_fingerprint),
       definition_version = CASE WHEN :fingerprint IS NULL THEN definition_version
                                 ELSE :definition_version END,
       updated_at = :now,
       version = version + 1
 WHERE saga_id = :saga_id;

-- name: release_fenced
-- The executor a cancel fenced has stopped: the lease left to run out for it ends now.
UPDATE saga_executions SET lease_expires_at = :now
 WHERE saga_id = :saga_id AND json_extract(cancel_requested, '$.fenced') = :owner
   AND status NOT IN ('COMPLETED', 'COMPENSATED', 'FAILED', 'COMPENSATING')
   AND lease_expires_at > :now;

-- name: release_claim
UPDATE saga_executions SET lease_owner = NULL WHERE saga_id = :saga_id AND lease_owner = :owner;

-- Durable waits (sagaz/engine/waits.py)

-- name: saga_status
SELECT status FROM saga_executions WHERE saga_id = :saga_id;

-- name: insert_signal
INSERT INTO saga_signals (saga_id, signal_id, name, payload, created_at)
VALUES (:saga_id, :signal_id, :name, :payload, :now)
ON CONFLICT (saga_id, signal_id) DO NOTHING;

-- name: count_signal
-- A parked saga becomes due at once (0 is before any clock).
UPDATE saga_executions
   SET signal_seq = signal_seq + 1,
       wake_at = CASE WHEN status = 'WAITING' THEN 0 ELSE wake_at END
 WHERE saga_id = :saga_id;

-- name: select_signals
SELECT signal_id, name, payload, created_at FROM saga_signals
 WHERE saga_id = :saga_id AND NOT consumed
 ORDER BY seq;

-- name: consume_signal
UPDATE saga_signals SET consumed = 1 WHERE saga_id = :saga_id AND signal_id = :signal_id;

-- name: forget_signals
DELETE FROM saga_signals WHERE saga_id = :saga_id;

-- name: claim_due
-- The one query per worker interval: the partial index on wake_at holds only parked sagas.
UPDATE saga_executions
   SET lease_owner = :owner, lease_expires_at = :expires
 WHERE saga_id IN (SELECT saga_id FROM saga_executions
                    WHERE status = 'WAITING' AND wake_at <= :now
                      AND (:saga_id IS NULL OR saga_id = :saga_id)
                      AND (lease_owner IS NULL OR lease_expires_at < :real_now)
                    ORDER BY wake_at
                    LIMIT :limit)
RETURNING saga_id;
