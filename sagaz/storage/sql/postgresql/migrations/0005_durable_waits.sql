-- Durable waits, signals and timers (sagaz/engine/waits.py).
--
-- A parked saga is a saga_executions row with status WAITING and a wake_at: its earliest timer,
-- or the epoch once a signal arrived for it. Workers find the due ones with ONE query on the
-- partial index below (status = 'WAITING' AND wake_at <= now, oldest first), however many sagas
-- wait: no polling per saga. signal_seq counts the signals ever sent to the saga; a park that
-- saw an older count wakes the saga at once, so a signal that arrives while the saga is on its
-- way to a wait is never missed.

ALTER TABLE saga_executions DROP CONSTRAINT saga_executions_status_check;
ALTER TABLE saga_executions ADD CONSTRAINT saga_executions_status_check CHECK (status IN
    ('PENDING', 'RUNNING', 'WAITING', 'COMPENSATING', 'COMPLETED', 'COMPENSATED', 'FAILED'));

-- Constant defaults: no table rewrite.
ALTER TABLE saga_executions
    ADD COLUMN wake_at    timestamptz,
    ADD COLUMN signal_seq bigint NOT NULL DEFAULT 0;

-- Only parked sagas are in it: it stays as small as the number of waiting sagas.
CREATE INDEX saga_executions_wake_at ON saga_executions (wake_at) WHERE status = 'WAITING';

-- Signals kept until a wait of their name consumes them (a signal may arrive before the saga
-- reaches its wait). Not partitioned, like saga_steps: small per saga and read with it. The
-- primary key makes a signal id idempotent per saga; the identity orders a saga's signals. The
-- rows of a saga whose definition has waits go with its final commit.
CREATE TABLE saga_signals (
    saga_id     uuid        NOT NULL,
    signal_id   text        NOT NULL,
    name        text        NOT NULL,
    payload     jsonb       NOT NULL DEFAULT '{}'::jsonb,
    seq         bigint      GENERATED ALWAYS AS IDENTITY,
    created_at  timestamptz NOT NULL DEFAULT now(),
    consumed_at timestamptz,
    CONSTRAINT saga_signals_pkey PRIMARY KEY (saga_id, signal_id)
);

-- WAITING sagas are alive: retention keeps them like running ones (see 0003).
CREATE OR REPLACE FUNCTION sagaz_live_rows_condition(p_table text, p_dead_letters_from timestamptz)
RETURNS text LANGUAGE sql STABLE AS $$
    SELECT CASE p_table
        WHEN 'saga_executions' THEN
            $c$status IN ('PENDING', 'RUNNING', 'WAITING', 'COMPENSATING')$c$
        WHEN 'saga_outbox' THEN
            $c$(status IN ('PENDING', 'FAILED') OR status = 'CLAIMED'$c$
            || CASE WHEN p_dead_letters_from IS NULL THEN $c$ OR status = 'DEAD_LETTER')$c$
                    ELSE format($c$ OR (status = 'DEAD_LETTER' AND created_at >= %L))$c$,
                                p_dead_letters_from)
               END
    END
$$;

-- CREATE OR REPLACE resets the settings 0003 pinned on the function: pin them again.
DO $$
BEGIN
    EXECUTE format('ALTER FUNCTION sagaz_live_rows_condition(text, timestamptz) '
                   'SET search_path = %I, pg_temp', current_schema());
    EXECUTE format('ALTER FUNCTION sagaz_live_rows_condition(text, timestamptz) '
                   'SET DateStyle = %L', 'ISO, YMD');
END
$$;
