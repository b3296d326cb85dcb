-- Partition maintenance: settings, functions, and the initial partitions.
--
-- Public functions (names from the HA design summary, a contract):
--   create_saga_executions_partition(date)  monthly  -> partition name
--   create_saga_outbox_partition(date)      daily    -> partition name
--   create_saga_audit_log_partition(date)   monthly  -> partition name
--   maintain_all_partitions([table])        -> one row per thing it did
--   cleanup_consumer_inbox(retention_days)  -> deleted rows (default 90 days)
--   get_partition_statistics()              -> one row per partition
-- Helpers are prefixed sagaz_.
--
-- Partition bounds are UTC midnights (first of the month / the day) whatever the session TimeZone,
-- so every session computes the same ranges and names (saga_executions_p2026_11,
-- saga_outbox_p2026_11_24).
--
-- Concurrency. Everything that creates, fills or drops partitions of a table first takes a
-- transaction-scoped advisory lock for that table (sagaz_lock_partitioned_table), then re-reads the
-- catalog: a second session calling the same function waits, then finds the partition made and
-- returns it. Tables are always locked in the same order (by name), so two maintenance runs cannot
-- deadlock each other. The functions require READ COMMITTED (the default): under REPEATABLE READ a
-- waiting session would not see what the first one created.
--
-- Heavy locks. A new partition is created as a plain table and ATTACHed, which takes only SHARE
-- UPDATE EXCLUSIVE on the parent (inserts and reads go on) and ACCESS EXCLUSIVE on the DEFAULT
-- partition (rarely written). Dropping an expired partition needs ACCESS EXCLUSIVE on the parent;
-- maintain_all_partitions() does the drops last, right before its caller commits. Run it with a
-- lock_timeout (SET lock_timeout = '5s'): a run that times out is simply retried next time, with
-- future partitions premade well ahead (sagaz_partition_settings.premake). All locks are held
-- until commit: a transaction of the application that touches the DEFAULT partitions of two
-- tables can (rarely) deadlock with a run and PostgreSQL then aborts one of them; calling
-- maintain_all_partitions('<table>') once per table, each in its own transaction, avoids that.
--
-- Callers' search_path does not matter: at the end of this file every function is pinned to the
-- schema these migrations ran in. Every dynamic identifier goes through format('%I').

CREATE TABLE sagaz_partition_settings (
    -- A range-partitioned table of this schema; its partition key must be a timestamptz column.
    table_name text     PRIMARY KEY,
    -- Length of one partition. Changing it is safe: existing partitions are kept, new ones are
    -- clipped to the gaps between them.
    "interval" text     NOT NULL CONSTRAINT sagaz_partition_settings_interval_check
                            CHECK ("interval" IN ('month', 'day')),
    -- Partitions whose whole range is older than now() - retention are dropped; NULL keeps all.
    retention  interval CONSTRAINT sagaz_partition_settings_retention_check
                            CHECK (retention > interval '0'),
    -- How many partitions ahead of the current one maintenance keeps ready.
    premake    integer  NOT NULL CONSTRAINT sagaz_partition_settings_premake_check
                            CHECK (premake BETWEEN 0 AND 1000)
);

INSERT INTO sagaz_partition_settings (table_name, "interval", retention, premake) VALUES
    ('saga_executions', 'month', interval '12 months', 3),
    ('saga_outbox',     'day',   interval '30 days',   7),
    ('saga_audit_log',  'month', interval '12 months', 3);


-- The period of p_interval ('month' or 'day') containing p_day, as UTC bounds, and the partition
-- name suffix for it.
CREATE FUNCTION sagaz_partition_bounds(
    p_interval text, p_day date,
    OUT range_start timestamptz, OUT range_end timestamptz, OUT suffix text)
LANGUAGE plpgsql STABLE STRICT AS $$
DECLARE
    -- Explicit ::timestamp: date_trunc(text, date) would pick the timestamptz overload and so
    -- depend on the session TimeZone.
    v_start timestamp := date_trunc(p_interval, p_day::timestamp);
BEGIN
    IF p_interval = 'month' THEN
        range_end := (v_start + interval '1 month') AT TIME ZONE 'UTC';
        suffix := to_char(v_start, '"p"YYYY_MM');
    ELSIF p_interval = 'day' THEN
        range_end := (v_start + interval '1 day') AT TIME ZONE 'UTC';
        suffix := to_char(v_start, '"p"YYYY_MM_DD');
    ELSE
        RAISE EXCEPTION 'sagaz: partition interval must be ''month'' or ''day'', not %',
            quote_literal(p_interval);
    END IF;
    range_start := v_start AT TIME ZONE 'UTC';
END
$$;


-- The partitions of p_parent with their bounds, parsed from the catalog. range_start/range_end are
-- NULL for the DEFAULT partition and -infinity/infinity for MINVALUE/MAXVALUE.
CREATE FUNCTION sagaz_partitions(p_parent regclass)
RETURNS TABLE (partition_oid regclass, partition_name text, range_start timestamptz,
               range_end timestamptz, is_default boolean)
LANGUAGE sql STABLE AS $$
    SELECT b.oid::regclass, b.relname::text,
           CASE b.bound[1] WHEN 'MINVALUE' THEN '-infinity'::timestamptz
                           ELSE btrim(b.bound[1], '''')::timestamptz END,
           CASE b.bound[2] WHEN 'MAXVALUE' THEN 'infinity'::timestamptz
                           ELSE btrim(b.bound[2], '''')::timestamptz END,
           b.bound IS NULL
    FROM (
        -- The deparsed bound is "FOR VALUES FROM ('<timestamptz>') TO ('<timestamptz>')", written
        -- in this session's DateStyle/TimeZone and so read back exactly by the casts above.
        SELECT c.oid, c.relname,
               regexp_match(pg_get_expr(c.relpartbound, c.oid),
                            '^FOR VALUES FROM \((.*)\) TO \((.*)\)$') AS bound
        FROM pg_inherits i
        JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = p_parent
    ) b
$$;


-- Serializes partition DDL and row moves on one table across sessions, until transaction end.
CREATE FUNCTION sagaz_lock_partitioned_table(p_parent regclass)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    IF current_setting('transaction_isolation') <> 'read committed' THEN
        RAISE EXCEPTION 'sagaz: partition maintenance must run in READ COMMITTED, not %',
            upper(current_setting('transaction_isolation'))
            USING HINT = 'Call it outside an explicit REPEATABLE READ/SERIALIZABLE transaction.';
    END IF;
    -- Two-key form: a fixed class id ('saga' in ASCII) and the table's oid.
    PERFORM pg_advisory_xact_lock(1935763297, p_parent::oid::integer);
END
$$;


-- The settings row, parent table, partition key column and DEFAULT partition of p_table.
CREATE FUNCTION sagaz_partitioned_table(
    p_table text,
    OUT parent regclass, OUT key_column text, OUT default_partition regclass,
    OUT "interval" text, OUT retention interval, OUT premake integer)
LANGUAGE plpgsql STABLE AS $$
BEGIN
    SELECT s."interval", s.retention, s.premake INTO "interval", retention, premake
    FROM sagaz_partition_settings s WHERE s.table_name = p_table;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'sagaz: table % has no row in sagaz_partition_settings',
            quote_ident(p_table);
    END IF;
    parent := to_regclass(format('%I.%I', current_schema(), p_table));
    SELECT a.attname, nullif(pt.partdefid, 0)::regclass INTO key_column, default_partition
    FROM pg_partitioned_table pt
    JOIN pg_attribute a ON a.attrelid = pt.partrelid AND a.attnum = pt.partattrs[0]
    JOIN pg_type t ON t.oid = a.atttypid
    WHERE pt.partrelid = parent AND pt.partstrat = 'r' AND pt.partnatts = 1
      AND t.typname = 'timestamptz';
    IF NOT FOUND THEN
        RAISE EXCEPTION 'sagaz: %.% is not a table range-partitioned on one timestamptz column',
            quote_ident(current_schema()), quote_ident(p_table);
    END IF;
END
$$;


-- Makes sure a partition of p_table contains p_day (UTC) and returns its name. If rows for the new
-- range sit in the DEFAULT partition they are moved into it (PostgreSQL refuses to add a partition
-- whose range still has rows in DEFAULT).
CREATE FUNCTION sagaz_create_partition(
    p_table text, p_day date,
    OUT partition_name text, OUT created boolean, OUT moved_rows bigint)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    t record;
    v_schema text := current_schema();
    v_point timestamptz := p_day::timestamp AT TIME ZONE 'UTC';
    v_start timestamptz;
    v_end timestamptz;
    v_suffix text;
BEGIN
    IF p_day IS NULL OR NOT isfinite(p_day) THEN
        RAISE EXCEPTION 'sagaz: cannot create a partition of % for date %', p_table, p_day;
    END IF;
    created := false;
    moved_rows := 0;
    SELECT * INTO t FROM sagaz_partitioned_table(p_table);
    PERFORM sagaz_lock_partitioned_table(t.parent);

    -- Already covered? (By our partition, or by one of another length after an interval change.)
    SELECT p.partition_name INTO partition_name FROM sagaz_partitions(t.parent) p
    WHERE NOT p.is_default AND p.range_start <= v_point AND v_point < p.range_end;
    IF FOUND THEN
        RETURN;
    END IF;

    -- Clip the natural period to the gap around p_day between existing partitions, so ranges never
    -- overlap even if "interval" changed or someone added partitions by hand.
    SELECT b.range_start, b.range_end, b.suffix INTO v_start, v_end, v_suffix
    FROM sagaz_partition_bounds(t."interval", p_day) b;
    SELECT greatest(v_start, max(p.range_end) FILTER (WHERE p.range_end <= v_point)),
           least(v_end, min(p.range_start) FILTER (WHERE p.range_start > v_point))
    INTO v_start, v_end
    FROM sagaz_partitions(t.parent) p WHERE NOT p.is_default;

    partition_name := p_table || '_' || v_suffix;
    IF to_regclass(format('%I.%I', v_schema, partition_name)) IS NOT NULL THEN
        IF EXISTS (SELECT 1 FROM sagaz_partitions(t.parent) p
                   WHERE p.partition_name = sagaz_create_partition.partition_name) THEN
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

    -- Lock order parent -> DEFAULT, the same as an INSERT routed to DEFAULT, so no deadlock.
    -- SHARE UPDATE EXCLUSIVE lets inserts and reads of the other partitions continue.
    EXECUTE format('LOCK TABLE %I.%I IN SHARE UPDATE EXCLUSIVE MODE', v_schema, p_table);

    -- A plain table shaped like the parent (columns, NOT NULL, CHECK, defaults), attached below.
    -- Not CREATE TABLE ... PARTITION OF: that takes ACCESS EXCLUSIVE on the parent and fails
    -- outright while DEFAULT holds rows of the range.
    EXECUTE format('CREATE TABLE %I.%I (LIKE %I.%I INCLUDING DEFAULTS INCLUDING CONSTRAINTS '
                   'INCLUDING STORAGE INCLUDING COMPRESSION)',
                   v_schema, partition_name, v_schema, p_table);

    IF t.default_partition IS NOT NULL THEN
        -- Blocks writers of DEFAULT (readers too) until commit, so no row of the range can slip
        -- in between the move and the ATTACH, which needs this lock anyway.
        EXECUTE format('LOCK TABLE %s IN ACCESS EXCLUSIVE MODE', t.default_partition);
        -- Rows move within this transaction: a crash or error anywhere rolls back the whole move.
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


CREATE FUNCTION create_saga_executions_partition(p_day date) RETURNS text
LANGUAGE sql AS $$ SELECT partition_name FROM sagaz_create_partition('saga_executions', p_day) $$;

CREATE FUNCTION create_saga_outbox_partition(p_day date) RETURNS text
LANGUAGE sql AS $$ SELECT partition_name FROM sagaz_create_partition('saga_outbox', p_day) $$;

CREATE FUNCTION create_saga_audit_log_partition(p_day date) RETURNS text
LANGUAGE sql AS $$ SELECT partition_name FROM sagaz_create_partition('saga_audit_log', p_day) $$;


-- For every table of sagaz_partition_settings, in this order:
--   1. rows that landed in DEFAULT move into proper partitions ('moved', one row per partition),
--      which are created on the way ('created');
--   2. the current partition and `premake` ones ahead exist ('created' for the new ones);
--   3. statistics of the parent and its partitions are refreshed ('analyzed'; autovacuum never
--      analyzes a partitioned parent, and the planner needs its statistics);
--   4. partitions whose whole range is older than now() - retention are DROPped ('dropped'); for
--      saga_executions, the saga_steps rows of those sagas are deleted first (saga_steps is not
--      partitioned and has no foreign key, see 0001).
-- Idempotent: a second run only reports 'analyzed'. Rows of DEFAULT older than retention move
-- into their partition and are dropped with it, like all data of that age.
--
-- Locks taken are held until the caller commits. A scheduler that wants to hold them for less
-- time calls maintain_all_partitions('saga_outbox') etc., one table per transaction.
CREATE FUNCTION maintain_all_partitions(only_table text DEFAULT NULL)
RETURNS TABLE (table_name text, action text, partition_name text, detail text)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    s record;
    t record;
    p record;
    r record;
    v_day date;
    v_days date[];
    v_today date := (now() AT TIME ZONE 'UTC')::date;
    v_cutoff timestamptz;
    v_count bigint;
BEGIN
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

    FOR s IN SELECT st.table_name FROM sagaz_partition_settings st
             WHERE st.table_name = coalesce(only_table, st.table_name) ORDER BY st.table_name LOOP
        SELECT * INTO t FROM sagaz_partitioned_table(s.table_name);
        table_name := s.table_name;

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
            SELECT * INTO r FROM sagaz_create_partition(s.table_name, v_day);
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

        EXECUTE format('ANALYZE %s', t.parent);
        partition_name := NULL; action := 'analyzed'; detail := NULL;
        RETURN NEXT;
    END LOOP;

    -- Drops last: their ACCESS EXCLUSIVE locks on the parents are then held only until the
    -- caller commits, which follows.
    FOR s IN SELECT st.table_name FROM sagaz_partition_settings st
             WHERE st.retention IS NOT NULL AND st.table_name = coalesce(only_table, st.table_name)
             ORDER BY st.table_name LOOP
        SELECT * INTO t FROM sagaz_partitioned_table(s.table_name);
        table_name := s.table_name;
        v_cutoff := ((now() AT TIME ZONE 'UTC') - t.retention) AT TIME ZONE 'UTC';
        FOR p IN SELECT * FROM sagaz_partitions(t.parent) x
                 WHERE NOT x.is_default AND x.range_end <= v_cutoff ORDER BY x.range_start LOOP
            -- Parent first, as inserts lock it: DROP alone would lock the partition, then the
            -- parent, and could deadlock with an insert into that partition.
            EXECUTE format('LOCK TABLE %s IN ACCESS EXCLUSIVE MODE', t.parent);
            detail := NULL;
            IF s.table_name = 'saga_executions' THEN
                EXECUTE format('DELETE FROM saga_steps st USING %s e WHERE st.saga_id = e.saga_id',
                               p.partition_oid);
                GET DIAGNOSTICS v_count = ROW_COUNT;
                detail := format('%s saga_steps rows deleted', v_count);
            END IF;
            EXECUTE format('DROP TABLE %s', p.partition_oid);
            partition_name := p.partition_name;
            action := 'dropped';
            RETURN NEXT;
        END LOOP;
    END LOOP;
END
$$;


-- Deletes consumer_inbox rows processed more than retention_days ago; returns how many. Keep
-- retention_days longer than any broker redelivery window, or duplicates get through.
CREATE FUNCTION cleanup_consumer_inbox(retention_days integer DEFAULT 90)
RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    v_count bigint;
BEGIN
    IF retention_days IS NULL OR retention_days < 0 THEN
        RAISE EXCEPTION 'sagaz: retention_days must be a non-negative number of days, not %',
            coalesce(retention_days::text, 'NULL');
    END IF;
    DELETE FROM consumer_inbox WHERE processed_at < now() - make_interval(days => retention_days);
    GET DIAGNOSTICS v_count = ROW_COUNT;
    RETURN v_count;
END
$$;


-- One row per partition (DEFAULT included, with NULL bounds) of every managed table.
-- row_count: by default the planner's estimate (pg_class.reltuples, kept by autovacuum/ANALYZE),
-- because counting a month of sagas for a metrics scrape would cost a full scan; an exact count
-- when exact => true, for partitions never analyzed, and always for DEFAULT partitions (expected
-- to be empty; rows there are what an operator alerts on).
CREATE FUNCTION get_partition_statistics(exact boolean DEFAULT false)
RETURNS TABLE (table_name text, partition_name text, range_start timestamptz,
               range_end timestamptz, row_count bigint, total_bytes bigint)
LANGUAGE plpgsql STABLE AS $$
#variable_conflict use_column
DECLARE
    s record;
    p record;
    v_parent regclass;
    v_reltuples real;
BEGIN
    FOR s IN SELECT st.table_name FROM sagaz_partition_settings st ORDER BY st.table_name LOOP
        v_parent := to_regclass(format('%I.%I', current_schema(), s.table_name));
        CONTINUE WHEN v_parent IS NULL;
        FOR p IN SELECT * FROM sagaz_partitions(v_parent) x
                 ORDER BY x.is_default, x.range_start LOOP
            table_name := s.table_name;
            partition_name := p.partition_name;
            range_start := p.range_start;
            range_end := p.range_end;
            SELECT c.reltuples INTO v_reltuples FROM pg_class c WHERE c.oid = p.partition_oid;
            IF exact OR p.is_default OR v_reltuples < 0 THEN
                EXECUTE format('SELECT count(*) FROM %s', p.partition_oid) INTO row_count;
            ELSE
                row_count := v_reltuples::bigint;
            END IF;
            total_bytes := pg_total_relation_size(p.partition_oid);
            RETURN NEXT;
        END LOOP;
    END LOOP;
END
$$;


-- Pin every function above to this schema (and ISO dates, which the bound parsing and %L of
-- timestamps rely on), so they work from any caller's search_path. pg_catalog stays implicitly
-- first and pg_temp last: neither the caller's objects nor temporary ones can shadow ours.
DO $$
DECLARE
    f regprocedure;
BEGIN
    FOR f IN
        SELECT p.oid::regprocedure FROM pg_proc p
        WHERE p.pronamespace = quote_ident(current_schema())::regnamespace
          AND p.proname IN ('sagaz_partition_bounds', 'sagaz_partitions',
                            'sagaz_lock_partitioned_table', 'sagaz_partitioned_table',
                            'sagaz_create_partition', 'create_saga_executions_partition',
                            'create_saga_outbox_partition', 'create_saga_audit_log_partition',
                            'maintain_all_partitions', 'cleanup_consumer_inbox',
                            'get_partition_statistics')
    LOOP
        EXECUTE format('ALTER FUNCTION %s SET search_path = %I, pg_temp',
                       f, current_schema());
        EXECUTE format('ALTER FUNCTION %s SET DateStyle = %L', f, 'ISO, YMD');
    END LOOP;
END
$$;


-- The initial partitions (current period and premake ahead), so inserts land in dated partitions
-- from the start.
SELECT count(*) FROM maintain_all_partitions();
