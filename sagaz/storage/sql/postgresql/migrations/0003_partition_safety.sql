-- Partition maintenance that loses nothing and never breaks a running saga (replaces parts of 0002).
--
-- 1. Gaps. When "interval" changes (say day -> month), the new period of today may be partly
--    covered by partitions of the old length: 0002 saw today covered and created nothing for the
--    rest of the month, so rows of those days stayed in DEFAULT for good. Now every period that
--    maintenance makes sure of is filled completely, one partition per uncovered gap
--    (sagaz_fill_period).
-- 2. Reference time. maintain_all_partitions(only_table, reference_time) computes "today", the
--    premade horizon and the retention cutoff from reference_time (default now()), as pg_partman's
--    run_maintenance(p_analyze, ...) does with its own clock: tests and drills need no real date.
-- 3. Retention keeps what is alive. A partition past its retention is dropped only when it holds
--    no saga that is still running (PENDING, RUNNING, COMPENSATING) and no outbox event that is
--    unsent (PENDING, FAILED, CLAIMED) or a dead letter younger than its own retention
--    (sagaz_partition_settings.dead_letter_retention, default 90 days for saga_outbox). Such rows
--    keep their partition: it is rewritten to hold only them (the finished rows are dropped with
--    the old table) and reported as 'kept'. The rows keep their created_at, so a saga keeps its
--    identity (saga_id, created_at) and the storage's fenced updates still find it. The audit
--    log has no live rows: its partitions go at their retention.
-- 4. Locks. A writer that routes a row to DEFAULT (or plans an UPDATE against DEFAULT) while a
--    partition for that row's range is attached used to fail with a CheckViolation on DEFAULT
--    (or match no row: a fenced update then reads as a lost lease), because PostgreSQL chose the
--    partition before it waited. Now maintenance locks the parent in SHARE mode before it changes
--    partitions: every writer of the table waits on the parent itself, before its statement is
--    planned, and then routes with the new partitions. When rows move out of DEFAULT the lock is
--    ACCESS EXCLUSIVE, so readers too plan after the move and never look for a saga where it was.
--    Writers pause for the few milliseconds an ATTACH of a new, empty partition takes; for as
--    long as the rows a lagging maintenance has to move take, when it has to.
--    A lock is never upgraded from SHARE (that could deadlock with a reader turning writer), and
--    ANALYZE runs before any of it.

ALTER TABLE sagaz_partition_settings
    -- Dead letters (saga_outbox) are kept this long after their event was created, even when
    -- their partition is past retention; NULL keeps them until someone purges them.
    ADD COLUMN dead_letter_retention interval
        CONSTRAINT sagaz_partition_settings_dead_letter_retention_check
            CHECK (dead_letter_retention > interval '0');

UPDATE sagaz_partition_settings SET dead_letter_retention = interval '90 days'
 WHERE table_name = 'saga_outbox';

-- Retention looks dead letters up by age: without this partial index, every run would scan a
-- whole day of sent events to find the few dead ones.
CREATE INDEX saga_outbox_dead_letter_created_at ON saga_outbox (created_at)
    WHERE status = 'DEAD_LETTER';


-- Whether p_default (a DEFAULT partition, NULL for none) holds rows whose p_key is in
-- [p_start, p_end); a NULL bound is open.
CREATE FUNCTION sagaz_default_has_rows(
    p_default regclass, p_key text, p_start timestamptz, p_end timestamptz)
RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
    v_found boolean;
BEGIN
    IF p_default IS NULL THEN
        RETURN false;
    END IF;
    EXECUTE format('SELECT EXISTS (SELECT 1 FROM %s WHERE ($1 IS NULL OR %I >= $1) '
                   'AND ($2 IS NULL OR %I < $2))', p_default, p_key, p_key)
        INTO v_found USING p_start, p_end;
    RETURN v_found;
END
$$;


-- Makes sure a partition of p_table contains the instant p_point, clipped to the gap around it
-- between existing partitions, and moves the rows of DEFAULT that belong to it.
CREATE FUNCTION sagaz_fill_gap(
    p_table text, p_point timestamptz,
    OUT partition_name text, OUT created boolean, OUT moved_rows bigint)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    t record;
    v_schema text := current_schema();
    v_start timestamptz;
    v_end timestamptz;
    v_suffix text;
    v_has_rows boolean := false;
BEGIN
    IF p_point IS NULL OR NOT isfinite(p_point) THEN
        RAISE EXCEPTION 'sagaz: cannot create a partition of % for %', p_table, p_point;
    END IF;
    created := false;
    moved_rows := 0;
    SELECT * INTO t FROM sagaz_partitioned_table(p_table);
    PERFORM sagaz_lock_partitioned_table(t.parent);

    -- Already covered? (By our partition, or by one of another length after an interval change.)
    SELECT p.partition_name INTO partition_name FROM sagaz_partitions(t.parent) p
    WHERE NOT p.is_default AND p.range_start <= p_point AND p_point < p.range_end;
    IF FOUND THEN
        RETURN;
    END IF;

    -- The natural period, clipped to the gap around p_point between existing partitions, so
    -- ranges never overlap even if "interval" changed or someone added partitions by hand.
    SELECT b.range_start, b.range_end, b.suffix INTO v_start, v_end, v_suffix
    FROM sagaz_partition_bounds(t."interval", (p_point AT TIME ZONE 'UTC')::date) b;
    SELECT greatest(v_start, max(p.range_end) FILTER (WHERE p.range_end <= p_point)),
           least(v_end, min(p.range_start) FILTER (WHERE p.range_start > p_point))
    INTO v_start, v_end
    FROM sagaz_partitions(t.parent) p WHERE NOT p.is_default;

    partition_name := p_table || '_' || v_suffix;
    IF to_regclass(format('%I.%I', v_schema, partition_name)) IS NOT NULL THEN
        IF EXISTS (SELECT 1 FROM sagaz_partitions(t.parent) p
                   WHERE p.partition_name = sagaz_fill_gap.partition_name) THEN
            -- Our natural name is taken by a partition of another range (interval changed):
            -- name this one after its exact start.
            partition_name := p_table || '_p'
                || to_char(v_start AT TIME ZONE 'UTC', 'YYYY_MM_DD"_"HH24MISS');
        ELSE
            RAISE EXCEPTION 'sagaz: cannot create partition %.%: a table of that name exists and '
                'is not a partition of %', quote_ident(v_schema), quote_ident(partition_name),
                quote_ident(p_table)
                USING ERRCODE = 'duplicate_table',
                      HINT = 'Rename or drop that table; sagaz owns names <table>_pYYYY_MM[_DD].';
        END IF;
    END IF;

    -- Writers wait on the parent from here on, before they route or plan (header, 4). Readers go
    -- on, unless rows have to move: then they wait too. The mode is chosen before the lock is
    -- taken: upgrading SHARE to ACCESS EXCLUSIVE would deadlock with a transaction that read the
    -- table and now waits to write it. Rows that arrive in DEFAULT between this look and the lock
    -- need the upgrade after all (a rare race; PostgreSQL then resolves any deadlock).
    v_has_rows := sagaz_default_has_rows(t.default_partition, t.key_column, v_start, v_end);
    IF v_has_rows THEN
        EXECUTE format('LOCK TABLE %I.%I IN ACCESS EXCLUSIVE MODE', v_schema, p_table);
    ELSE
        EXECUTE format('LOCK TABLE %I.%I IN SHARE MODE', v_schema, p_table);
        v_has_rows := sagaz_default_has_rows(t.default_partition, t.key_column, v_start, v_end);
        IF v_has_rows THEN
            EXECUTE format('LOCK TABLE %I.%I IN ACCESS EXCLUSIVE MODE', v_schema, p_table);
        END IF;
    END IF;

    -- A plain table shaped like the parent (columns, NOT NULL, CHECK, defaults), attached below.
    -- Not CREATE TABLE ... PARTITION OF: that fails outright while DEFAULT holds rows of the range.
    EXECUTE format('CREATE TABLE %I.%I (LIKE %I.%I INCLUDING DEFAULTS INCLUDING CONSTRAINTS '
                   'INCLUDING STORAGE INCLUDING COMPRESSION)',
                   v_schema, partition_name, v_schema, p_table);

    IF t.default_partition IS NOT NULL THEN
        -- ATTACH needs this lock anyway; taken parent first, as writers do.
        EXECUTE format('LOCK TABLE %s IN ACCESS EXCLUSIVE MODE', t.default_partition);
    END IF;
    IF v_has_rows THEN
        -- Rows move within this transaction: a crash or error anywhere rolls back the whole move.
        -- Every column moves as it is (created_at, identities, versions): nothing that
        -- identifies or fences a row changes.
        EXECUTE format('WITH moved AS (DELETE FROM %s WHERE %I >= $1 AND %I < $2 RETURNING *) '
                       'INSERT INTO %I.%I SELECT * FROM moved',
                       t.default_partition, t.key_column, t.key_column, v_schema, partition_name)
            USING v_start, v_end;
        GET DIAGNOSTICS moved_rows = ROW_COUNT;
    END IF;

    -- Builds the parent's indexes on the new table, then checks DEFAULT has no rows of the range
    -- (it has none left) and that the new table's rows fit the range (they were selected so).
    EXECUTE format('ALTER TABLE %I.%I ATTACH PARTITION %I.%I FOR VALUES FROM (%L) TO (%L)',
                   v_schema, p_table, v_schema, partition_name, v_start, v_end);
    created := true;
END
$$;


-- Makes sure the whole natural period ("interval") containing p_point is covered: one partition
-- per gap, so a period partly covered by partitions of another length is completed. Returns the
-- partitions it made (none when the period was covered already).
CREATE FUNCTION sagaz_fill_period(p_table text, p_point timestamptz)
RETURNS TABLE (partition_name text, created boolean, moved_rows bigint)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    t record;
    p record;
    r record;
    v_start timestamptz;
    v_end timestamptz;
    v_cursor timestamptz;
    v_gap timestamptz;
BEGIN
    SELECT * INTO t FROM sagaz_partitioned_table(p_table);
    SELECT b.range_start, b.range_end INTO v_start, v_end
    FROM sagaz_partition_bounds(t."interval", (p_point AT TIME ZONE 'UTC')::date) b;
    LOOP
        -- Walk the partitions overlapping the period in order; the first instant none of them
        -- covers is a gap. One catalog read per gap: maintenance calls this for every premade
        -- period, so it must not cost a read per partition.
        v_cursor := v_start;
        v_gap := NULL;
        FOR p IN SELECT x.range_start, x.range_end FROM sagaz_partitions(t.parent) x
                 WHERE NOT x.is_default AND x.range_end > v_start AND x.range_start < v_end
                 ORDER BY x.range_start LOOP
            IF p.range_start > v_cursor THEN
                v_gap := v_cursor;
                EXIT;
            END IF;
            v_cursor := greatest(v_cursor, p.range_end);
        END LOOP;
        IF v_gap IS NULL AND v_cursor < v_end THEN
            v_gap := v_cursor;
        END IF;
        EXIT WHEN v_gap IS NULL;
        SELECT * INTO r FROM sagaz_fill_gap(p_table, v_gap);
        partition_name := r.partition_name;
        created := r.created;
        moved_rows := r.moved_rows;
        RETURN NEXT;
    END LOOP;
END
$$;


-- 0002's function, now the gap-filler of one day (the public create_* functions call it).
CREATE OR REPLACE FUNCTION sagaz_create_partition(
    p_table text, p_day date,
    OUT partition_name text, OUT created boolean, OUT moved_rows bigint)
LANGUAGE plpgsql AS $$
BEGIN
    IF p_day IS NULL OR NOT isfinite(p_day) THEN
        RAISE EXCEPTION 'sagaz: cannot create a partition of % for date %', p_table, p_day;
    END IF;
    SELECT g.partition_name, g.created, g.moved_rows INTO partition_name, created, moved_rows
    FROM sagaz_fill_gap(p_table, p_day::timestamp AT TIME ZONE 'UTC') g;
END
$$;


-- The rows of one partition of p_table that retention must not drop, as a WHERE condition
-- (NULL: none are). Statuses are listed, not negated, so that the indexes of 0001 (status,
-- claimable, claimed_until) and the dead-letter index above answer without a full scan while the
-- parent is locked. A migration that adds a non-final status must add it here.
CREATE FUNCTION sagaz_live_rows_condition(p_table text, p_dead_letters_from timestamptz)
RETURNS text LANGUAGE sql STABLE AS $$
    SELECT CASE p_table
        WHEN 'saga_executions' THEN
            $c$status IN ('PENDING', 'RUNNING', 'COMPENSATING')$c$
        WHEN 'saga_outbox' THEN
            $c$(status IN ('PENDING', 'FAILED') OR status = 'CLAIMED'$c$
            || CASE WHEN p_dead_letters_from IS NULL THEN $c$ OR status = 'DEAD_LETTER')$c$
                    ELSE format($c$ OR (status = 'DEAD_LETTER' AND created_at >= %L))$c$,
                                p_dead_letters_from)
               END
    END
$$;


-- Retention of one partition: drop it when nothing in it is alive; otherwise keep only the live
-- rows (a new table with the same name and range replaces it) and say so. Called with the
-- parent locked ACCESS EXCLUSIVE.
CREATE FUNCTION sagaz_expire_partition(
    p_table text, p_partition regclass, p_name text, p_start timestamptz, p_end timestamptz,
    p_live text, OUT action text, OUT detail text)
LANGUAGE plpgsql AS $$
DECLARE
    v_schema text := current_schema();
    v_live bigint := 0;
    v_finished boolean;
    v_steps bigint := 0;
    v_by_status text;
    v_new text := p_name || '_keep';
BEGIN
    IF p_live IS NOT NULL THEN
        EXECUTE format('SELECT count(*) FROM %s WHERE %s', p_partition, p_live) INTO v_live;
    END IF;
    IF v_live = 0 THEN
        IF p_table = 'saga_executions' THEN
            -- saga_steps has no foreign key (0001): the steps of the dropped sagas go first.
            EXECUTE format('DELETE FROM saga_steps st USING %s e WHERE st.saga_id = e.saga_id',
                           p_partition);
            GET DIAGNOSTICS v_steps = ROW_COUNT;
            detail := format('%s saga_steps rows deleted', v_steps);
        END IF;
        EXECUTE format('DROP TABLE %s', p_partition);
        action := 'dropped';
        RETURN;
    END IF;

    EXECUTE format('SELECT string_agg(format(''%%s %%s'', status, n), '', '' ORDER BY status) '
                   'FROM (SELECT status, count(*) AS n FROM %s WHERE %s GROUP BY status) s',
                   p_partition, p_live) INTO v_by_status;
    action := 'kept';
    EXECUTE format('SELECT EXISTS (SELECT 1 FROM %s WHERE NOT (%s))', p_partition, p_live)
        INTO v_finished;
    IF NOT v_finished THEN
        detail := format('%s live rows kept past retention (%s)', v_live, v_by_status);
        RETURN;
    END IF;

    -- Finished rows go now; the live ones move, unchanged, to a table that takes the old one's
    -- place (same name, same range).
    IF p_table = 'saga_executions' THEN
        EXECUTE format('DELETE FROM saga_steps st USING (SELECT saga_id FROM %s WHERE NOT (%s)) e '
                       'WHERE st.saga_id = e.saga_id', p_partition, p_live);
        GET DIAGNOSTICS v_steps = ROW_COUNT;
    END IF;
    EXECUTE format('CREATE TABLE %I.%I (LIKE %I.%I INCLUDING DEFAULTS INCLUDING CONSTRAINTS '
                   'INCLUDING STORAGE INCLUDING COMPRESSION)', v_schema, v_new, v_schema, p_table);
    EXECUTE format('INSERT INTO %I.%I SELECT * FROM %s WHERE %s',
                   v_schema, v_new, p_partition, p_live);
    EXECUTE format('DROP TABLE %s', p_partition);
    EXECUTE format('ALTER TABLE %I.%I RENAME TO %I', v_schema, v_new, p_name);
    EXECUTE format('ALTER TABLE %I.%I ATTACH PARTITION %I.%I FOR VALUES FROM (%s) TO (%s)',
                   v_schema, p_table, v_schema, p_name,
                   CASE WHEN isfinite(p_start) THEN quote_literal(p_start) ELSE 'MINVALUE' END,
                   CASE WHEN isfinite(p_end) THEN quote_literal(p_end) ELSE 'MAXVALUE' END);
    detail := format('%s live rows kept past retention (%s); the finished rows were dropped',
                     v_live, v_by_status)
        || CASE WHEN p_table = 'saga_executions'
                THEN format(', %s saga_steps rows deleted', v_steps) ELSE '' END;
END
$$;


DROP FUNCTION maintain_all_partitions(text);

-- For every table of sagaz_partition_settings, in name order, each table in these steps:
--   1. statistics of the parent and its partitions are refreshed ('analyzed'; autovacuum never
--      analyzes a partitioned parent, and the planner needs its statistics). First: ANALYZE takes
--      a while on a big table and locks nothing writers need, so it must not run while this
--      function holds the parent in SHARE mode;
--   2. rows that landed in DEFAULT move into proper partitions ('moved', one row per partition),
--      which are created on the way ('created'); each period is filled completely;
--   3. the current period and `premake` ones ahead are covered ('created' for new partitions);
--   4. partitions whose whole range is older than reference_time - retention are DROPped
--      ('dropped'; for saga_executions the saga_steps rows of those sagas go first), unless they
--      hold live rows (header, 3): then they are kept with only those rows ('kept', the detail
--      counts them by status).
-- Step 1 runs for every table first; then every parent is locked once, in the writers' order,
-- in the strongest mode its work needs (see the body), and steps 2-4 follow.
-- reference_time (default now()) is "now" for all of it.
-- Idempotent: a second run only reports 'analyzed' (and 'kept' for what is still alive).
--
-- Locks taken are held until the caller commits. All tables in one call is safe under load (the
-- locks follow the writers' order), but holds every table's lock until the end; one table per
-- transaction, maintain_all_partitions('saga_outbox') etc., as `sagaz worker`, `sagaz db
-- maintain` and the generated CronJob do, pauses each table's writers only for its own work.
CREATE FUNCTION maintain_all_partitions(
    only_table text DEFAULT NULL, reference_time timestamptz DEFAULT NULL)
RETURNS TABLE (table_name text, action text, partition_name text, detail text)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    s record;
    t record;
    p record;
    r record;
    x record;
    v_now timestamptz := coalesce(reference_time, now());
    v_day date;
    v_days date[];
    v_today date := (v_now AT TIME ZONE 'UTC')::date;
    v_cutoff timestamptz;
    v_live text;
BEGIN
    IF NOT isfinite(v_now) THEN
        RAISE EXCEPTION 'sagaz: reference_time must be a finite time, not %', v_now;
    END IF;
    IF only_table IS NOT NULL AND NOT EXISTS (
            SELECT 1 FROM sagaz_partition_settings st WHERE st.table_name = only_table) THEN
        RAISE EXCEPTION 'sagaz: table % has no row in sagaz_partition_settings',
            quote_ident(only_table);
    END IF;
    -- Lock every table first, in name order: a concurrent run waits here as a whole.
    FOR s IN SELECT st.table_name FROM sagaz_partition_settings st
             WHERE st.table_name = coalesce(only_table, st.table_name) ORDER BY st.table_name LOOP
        SELECT * INTO t FROM sagaz_partitioned_table(s.table_name);
        PERFORM sagaz_lock_partitioned_table(t.parent);
    END LOOP;

    -- Statistics first, for every table, while no lock writers wait for is held (step 1).
    FOR s IN SELECT st.table_name FROM sagaz_partition_settings st
             WHERE st.table_name = coalesce(only_table, st.table_name) ORDER BY st.table_name LOOP
        SELECT * INTO t FROM sagaz_partitioned_table(s.table_name);
        EXECUTE format('ANALYZE %s', t.parent);
        table_name := s.table_name; partition_name := NULL; action := 'analyzed'; detail := NULL;
        RETURN NEXT;
    END LOOP;

    -- Every parent in the order a saga's commit writes them (saga_executions, saga_outbox,
    -- saga_audit_log, then any other by name), each at once in the strongest mode its work needs:
    -- ACCESS EXCLUSIVE when rows move out of DEFAULT or a partition expires (parent first, as
    -- writers lock it: DROP alone would lock the partition, then the parent, and could deadlock
    -- with an insert into it), else SHARE (a partition may be attached). The same order as the
    -- writers and no upgrade later: a run of all tables in one transaction cannot deadlock with
    -- a saga's commit, nor with a transaction that read a table and then writes it.
    FOR s IN SELECT st.table_name FROM sagaz_partition_settings st
             WHERE st.table_name = coalesce(only_table, st.table_name)
             ORDER BY array_position(ARRAY['saga_executions', 'saga_outbox', 'saga_audit_log'],
                                     st.table_name::text) NULLS LAST, st.table_name LOOP
        SELECT * INTO t FROM sagaz_partitioned_table(s.table_name);
        -- Calendar arithmetic in UTC, like the partition bounds ('1 month' back from the 31st).
        v_cutoff := ((v_now AT TIME ZONE 'UTC') - t.retention) AT TIME ZONE 'UTC';
        IF sagaz_default_has_rows(t.default_partition, t.key_column, NULL, NULL)
           OR EXISTS (SELECT 1 FROM sagaz_partitions(t.parent) y
                      WHERE NOT y.is_default AND y.range_end <= v_cutoff) THEN
            EXECUTE format('LOCK TABLE %s IN ACCESS EXCLUSIVE MODE', t.parent);
        ELSE
            EXECUTE format('LOCK TABLE %s IN SHARE MODE', t.parent);
        END IF;
    END LOOP;

    FOR s IN SELECT st.table_name, st.dead_letter_retention FROM sagaz_partition_settings st
             WHERE st.table_name = coalesce(only_table, st.table_name) ORDER BY st.table_name LOOP
        SELECT * INTO t FROM sagaz_partitioned_table(s.table_name);
        table_name := s.table_name;
        v_cutoff := ((v_now AT TIME ZONE 'UTC') - t.retention) AT TIME ZONE 'UTC';

        -- Periods with rows stuck in DEFAULT, then the current one and `premake` ahead. Collected
        -- first: no query may still be reading DEFAULT when a partition is attached.
        v_days := '{}';
        IF t.default_partition IS NOT NULL THEN
            EXECUTE format(
                'SELECT coalesce(array_agg(DISTINCT date_trunc(%L, %I AT TIME ZONE ''UTC'')::date), '
                '''{}'') FROM %s WHERE isfinite(%I)',
                t."interval", t.key_column, t.default_partition, t.key_column) INTO v_days;
        END IF;
        v_days := v_days || ARRAY(
            SELECT CASE t."interval" WHEN 'month' THEN (v_today + make_interval(months => i))::date
                                     ELSE v_today + i END
            FROM generate_series(0, t.premake) i);
        FOREACH v_day IN ARRAY v_days LOOP
            FOR r IN SELECT * FROM sagaz_fill_period(s.table_name,
                                                      v_day::timestamp AT TIME ZONE 'UTC') LOOP
                partition_name := r.partition_name;
                IF r.created THEN
                    action := 'created'; detail := NULL;
                    RETURN NEXT;
                END IF;
                IF r.moved_rows > 0 THEN
                    action := 'moved';
                    detail := format('%s rows from %s', r.moved_rows, t.default_partition);
                    RETURN NEXT;
                END IF;
            END LOOP;
        END LOOP;

        CONTINUE WHEN t.retention IS NULL;
        v_live := sagaz_live_rows_condition(
            s.table_name,
            ((v_now AT TIME ZONE 'UTC') - s.dead_letter_retention) AT TIME ZONE 'UTC');
        FOR p IN SELECT * FROM sagaz_partitions(t.parent) y
                 WHERE NOT y.is_default AND y.range_end <= v_cutoff ORDER BY y.range_start LOOP
            SELECT * INTO x FROM sagaz_expire_partition(
                s.table_name, p.partition_oid, p.partition_name, p.range_start, p.range_end,
                v_live);
            partition_name := p.partition_name;
            action := x.action;
            detail := x.detail;
            RETURN NEXT;
        END LOOP;
    END LOOP;
END
$$;


-- Pinned like the functions of 0002 (see there): this schema, ISO dates.
DO $$
DECLARE
    f regprocedure;
BEGIN
    FOR f IN
        SELECT p.oid::regprocedure FROM pg_proc p
        WHERE p.pronamespace = quote_ident(current_schema())::regnamespace
          AND p.proname IN ('sagaz_default_has_rows', 'sagaz_fill_gap', 'sagaz_fill_period',
                            'sagaz_create_partition',
                            'sagaz_live_rows_condition', 'sagaz_expire_partition',
                            'maintain_all_partitions')
    LOOP
        EXECUTE format('ALTER FUNCTION %s SET search_path = %I, pg_temp',
                       f, current_schema());
        EXECUTE format('ALTER FUNCTION %s SET DateStyle = %L', f, 'ISO, YMD');
    END LOOP;
END
$$;
