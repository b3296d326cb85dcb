-- Roles and database of a sagaz deployment; run by psql as the superuser on the primary, by the
-- local cluster (sagaz dev up) and by init-primary.sh (docker-compose, Kubernetes) alike.
-- Idempotent: re-running it resets the passwords and grants.
--
-- Passwords come from the environment, never from the command line (other users see that in ps):
--   SAGAZ_APP_PASSWORD, SAGAZ_READER_PASSWORD, SAGAZ_REPLICATION_PASSWORD
-- Names come from psql variables: app_user, reader_user, replication_user, app_db, and
-- app_schema (optional, default public): the schema sagaz's tables live in.
\set ON_ERROR_STOP on
\if :{?app_schema}
\else
\set app_schema public
\endif
\getenv app_password SAGAZ_APP_PASSWORD
\getenv reader_password SAGAZ_READER_PASSWORD
\getenv replication_password SAGAZ_REPLICATION_PASSWORD
SET password_encryption = 'scram-sha-256';

-- The application: owns its database and schema, runs migrations, reads and writes.
SELECT format('CREATE ROLE %I LOGIN', :'app_user')
 WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'app_user') \gexec
SELECT format('ALTER ROLE %I LOGIN PASSWORD %L', :'app_user', :'app_password') \gexec

-- Analytics and dashboards through the read pool: may read everything, write nothing (also
-- if its connection lands on the primary).
SELECT format('CREATE ROLE %I LOGIN', :'reader_user')
 WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'reader_user') \gexec
SELECT format('ALTER ROLE %I LOGIN PASSWORD %L', :'reader_user', :'reader_password') \gexec
SELECT format('ALTER ROLE %I SET default_transaction_read_only = on', :'reader_user') \gexec
SELECT format('GRANT pg_read_all_data TO %I', :'reader_user') \gexec
SELECT format('GRANT pg_monitor TO %I', :'reader_user') \gexec

-- Streaming replication (pg_basebackup, replicas): no database access at all.
SELECT format('CREATE ROLE %I LOGIN REPLICATION', :'replication_user')
 WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'replication_user') \gexec
SELECT format('ALTER ROLE %I LOGIN REPLICATION PASSWORD %L', :'replication_user',
              :'replication_password') \gexec

SELECT format('CREATE DATABASE %I OWNER %I', :'app_db', :'app_user')
 WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = :'app_db') \gexec
SELECT format('REVOKE ALL ON DATABASE %I FROM PUBLIC', :'app_db') \gexec
SELECT format('GRANT CONNECT ON DATABASE %I TO %I, %I', :'app_db', :'app_user',
              :'reader_user') \gexec

-- The schema of sagaz's objects, as a setting of the roles in this database, not as a
-- connection option: PgBouncer drops the `options` startup parameter (options=-c
-- search_path=...), so a pooled connection and a direct one would land in different schemas.
-- A role setting applies to every session of the role, through a pool or not.
\connect :"app_db"
SELECT format('CREATE SCHEMA IF NOT EXISTS %I AUTHORIZATION %I', :'app_schema', :'app_user')
 WHERE NOT EXISTS (SELECT FROM pg_namespace WHERE nspname = :'app_schema') \gexec
SELECT format('ALTER ROLE %I IN DATABASE %I SET search_path = %I', r, :'app_db', :'app_schema')
  FROM unnest(ARRAY[:'app_user', :'reader_user']) AS r \gexec
