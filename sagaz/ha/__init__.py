"""The PostgreSQL deployment sagaz ships: local processes (PostgreSQL primary and replicas,
PgBouncer pools) run from the machine's binaries, for development, tests and failure drills."""
