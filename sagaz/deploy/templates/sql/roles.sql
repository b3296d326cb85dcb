-- Roles and database of a sagaz deployment; run by psql as the superuser on the primary, by the
-- local cluster (sagaz dev up) and by init-primary.sh (docker-compose, Kubernetes) alike.
-- Idempotent: re-running it resets the passwords and grants.
--
-- Passwords come from the environment, never from the command line (other users see that in ps):
--   SAGAZ_APP_PASSWORD, SAGAZ_READER_PASSWORD, SAGAZ_REPLICATION_PASSWORD,
--   SAGAZ_MONITOR_PASSWORD (with monitor_user)
-- Names come from psql variables: app_user, reader_user, replication_user, app_db,
-- app_schema (optional, default public): the schema sagaz's tables live in, and monitor_user
-- (optional): the role of postgres_exporter.
--
-- CloudNativePG (sagaz init --k8s) runs this file too, converted to plain SQL by
-- sagaz/deploy/cnpg_sql.py: keep every password in a statement of its own (the operator sets
-- them from Secrets) and the replication role's statements apart (the operator has its own).
\set ON_ERROR_STOP on
\if :{?app_schema}
\else
\set app_schema public
\endif
\getenv app_password SAGAZ_APP_PASSWORD
\getenv reader_password SAGAZ_READER_PASSWORD
\getenv replication_password SAGAZ_REPLICATION_PASSWORD
SET password_encryption = 'scram-sha-256';

-- Least privilege (README "Who can read what"): the application owns its schema and nothing
-- else; the reader holds SELECT on the tables of that schema and pg_monitor, nothing on the
-- catalogs beyond what PostgreSQL grants PUBLIC; only the application may take advisory locks
-- or create temporary tables in the database. The superuser owns the database.

-- The application: owns its schema, runs migrations, reads and writes. No cluster-wide power:
-- a leaked application password must not reach other databases, roles or the server.
SELECT format('CREATE ROLE %I LOGIN', :'app_user')
 WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'app_user') \gexec
SELECT format('ALTER ROLE %I LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS',
              :'app_user') \gexec
SELECT format('ALTER ROLE %I PASSWORD %L', :'app_user', :'app_password') \gexec

-- Analytics and dashboards through the read pool: reads the sagaz tables, writes nothing (also
-- if its connection lands on the primary). Read-only transactions by default, but the role can
-- turn that setting off in its session (any role can): what refuses its writes are the missing
-- privileges, not the setting.
SELECT format('CREATE ROLE %I LOGIN', :'reader_user')
 WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'reader_user') \gexec
SELECT format('ALTER ROLE %I LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS',
              :'reader_user') \gexec
SELECT format('ALTER ROLE %I PASSWORD %L', :'reader_user', :'reader_password') \gexec
SELECT format('ALTER ROLE %I SET default_transaction_read_only = on', :'reader_user') \gexec
-- pg_read_all_data (granted by earlier versions of this file) covers the system catalogs:
-- pg_authid's password verifiers of every role, the superuser's included.
SELECT format('REVOKE pg_read_all_data FROM %I', :'reader_user')
 WHERE pg_has_role(:'reader_user', 'pg_read_all_data', 'MEMBER') \gexec
-- Replication lag, pg_stat_activity and the settings for dashboards (pg_stat_replication shows
-- its lag columns only to pg_read_all_stats, which pg_monitor includes).
SELECT format('GRANT pg_monitor TO %I', :'reader_user') \gexec

-- postgres_exporter (deployments with monitoring): the statistics views and settings through
-- pg_monitor, in the maintenance database `postgres` only. No CONNECT on the application's
-- database (revoked from PUBLIC below) and no privilege on any table: a leaked monitoring
-- password reads no saga.
\if :{?monitor_user}
\getenv monitor_password SAGAZ_MONITOR_PASSWORD
SELECT format('CREATE ROLE %I LOGIN', :'monitor_user')
 WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'monitor_user') \gexec
SELECT format('ALTER ROLE %I LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS '
              'CONNECTION LIMIT 10 PASSWORD %L', :'monitor_user', :'monitor_password') \gexec
SELECT format('GRANT pg_monitor TO %I', :'monitor_user') \gexec
\endif

-- Streaming replication (pg_basebackup, replicas): no database access at all.
SELECT format('CREATE ROLE %I LOGIN REPLICATION', :'replication_user')
 WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'replication_user') \gexec
SELECT format('ALTER ROLE %I LOGIN REPLICATION NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS',
              :'replication_user') \gexec
SELECT format('ALTER ROLE %I PASSWORD %L', :'replication_user', :'replication_password') \gexec

-- The database belongs to the superuser (earlier versions of this file gave it to the
-- application: an owner may drop it, create schemas in it and grant CONNECT on it to anyone).
SELECT format('CREATE DATABASE %I', :'app_db')
 WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = :'app_db') \gexec
SELECT format('ALTER DATABASE %I OWNER TO %I', :'app_db', current_user) \gexec
-- ALL: CONNECT and TEMPORARY. Neither role needs temporary tables.
SELECT format('REVOKE ALL ON DATABASE %I FROM PUBLIC', :'app_db') \gexec
SELECT format('REVOKE ALL ON DATABASE %I FROM %I, %I', :'app_db', :'app_user',
              :'reader_user') \gexec
SELECT format('GRANT CONNECT ON DATABASE %I TO %I, %I', :'app_db', :'app_user',
              :'reader_user') \gexec

\connect :"app_db"
-- The schema of sagaz's objects, owned by the application (also `public`, which PostgreSQL 15
-- gives to the database's owner), usable by the reader and nobody else.
SELECT format('CREATE SCHEMA IF NOT EXISTS %I AUTHORIZATION %I', :'app_schema', :'app_user')
 WHERE NOT EXISTS (SELECT FROM pg_namespace WHERE nspname = :'app_schema') \gexec
SELECT format('ALTER SCHEMA %I OWNER TO %I', :'app_schema', :'app_user') \gexec
SELECT format('REVOKE ALL ON SCHEMA %I FROM PUBLIC', :'app_schema') \gexec
SELECT format('GRANT USAGE ON SCHEMA %I TO %I', :'app_schema', :'reader_user') \gexec

-- The reader may SELECT every table of the schema: those there now and, through default
-- privileges, every table the application creates later (migrations, and the partitions that
-- maintenance adds: a partition inherits no privileges from its parent, and get_partition_
-- statistics() counts a DEFAULT partition's rows on the partition itself). Reads through a
-- parent, which the listings do, need only the parent's privilege.
SELECT format('GRANT SELECT ON ALL TABLES IN SCHEMA %I TO %I', :'app_schema',
              :'reader_user') \gexec
SELECT format('ALTER DEFAULT PRIVILEGES FOR ROLE %I IN SCHEMA %I GRANT SELECT ON TABLES TO %I',
              :'app_user', :'app_schema', :'reader_user') \gexec

-- Advisory locks belong to the application (migrations, lock_saga_ids, partition maintenance):
-- another role taking sagaz's keys would stall its writes. PUBLIC may execute every function of
-- pg_catalog; in this database these may only be executed by the application (and superusers).
-- pg_notify() likewise: only the application wakes the outbox relay. (The NOTIFY statement has
-- no privilege in PostgreSQL; the relay takes a notification as a hint to poll, nothing more.)
SELECT format('REVOKE EXECUTE ON FUNCTION %s FROM PUBLIC', p.oid::regprocedure),
       format('GRANT EXECUTE ON FUNCTION %s TO %I', p.oid::regprocedure, :'app_user')
  FROM pg_proc p
 WHERE p.pronamespace = 'pg_catalog'::regnamespace
   AND (p.proname LIKE 'pg\_%advisory\_%' OR p.proname = 'pg_notify')
 ORDER BY 1, 2 \gexec

-- The schema of sagaz's objects, as a setting of the roles in this database, not as a
-- connection option: PgBouncer drops the `options` startup parameter (options=-c
-- search_path=...), so a pooled connection and a direct one would land in different schemas.
-- A role setting applies to every session of the role, through a pool or not.
SELECT format('ALTER ROLE %I IN DATABASE %I SET search_path = %I', r, :'app_db', :'app_schema')
  FROM unnest(ARRAY[:'app_user', :'reader_user']) AS r \gexec
