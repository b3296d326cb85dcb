"""Runs prometheus-pgbouncer-exporter (the Debian package, 1.7) against PgBouncer 1.8 and later.

Run by the interpreter the package is installed for (``/usr/bin/python3 pgbouncer_exporter.py
--pgbouncer-host ... ``, the package's own options), never imported by sagaz. The package reads
SHOW STATS columns that PgBouncer 1.8 renamed (``total_requests`` became ``total_query_count``)
and fails on its first scrape; this gives it the current column names, adds the server-side
and wait-time columns the dashboards read, and reconnects after PgBouncer restarts (the
package opens one connection at start and keeps it forever). Metric names stay the package's:
``pgbouncer_<name>`` with labels ``database`` (and ``user`` for pools).

Connection settings come from libpq's environment: PGPASSFILE (a 0600 file, never a password
on the command line), PGSSLMODE, PGSSLROOTCERT.
"""

from __future__ import annotations

import sys
from typing import Any

# Installed by Debian's prometheus-pgbouncer-exporter for the system interpreter.
import psycopg2  # type: ignore[import-not-found, import-untyped, unused-ignore]
from prometheus_pgbouncer_exporter import (  # type: ignore[import-not-found, unused-ignore]
    cli,
    collectors,
)

STATS = {
    "total_query_count": ("requests_total", "Queries pooled by pgbouncer"),
    "total_xact_count": ("transactions_total", "Transactions pooled by pgbouncer"),
    "total_received": ("received_bytes_total", "Bytes of network traffic received"),
    "total_sent": ("sent_bytes_total", "Bytes of network traffic sent"),
    "total_query_time": ("query_microseconds_total",
                         "Microseconds spent by pgbouncer actively connected to PostgreSQL"),
    "total_wait_time": ("client_wait_microseconds_total",
                        "Microseconds clients spent waiting for a server connection"),
}
POOLS = {
    "cl_active": ("active_clients", "Client connections linked to a server connection"),
    "cl_waiting": ("waiting_clients", "Client connections waiting for a server connection"),
    "sv_active": ("active_servers", "Server connections linked to a client"),
    "sv_idle": ("idle_servers", "Server connections idle and ready for a client"),
    "maxwait": ("max_wait_seconds", "How long the oldest waiting client has waited"),
}


class ReconnectingConnection:
    """The one connection the collectors share, opened again after it broke (PgBouncer was
    restarted): a scrape fails once, the next one works."""

    def __init__(self, user: str, port: str, host: str | None) -> None:
        self._params = {"database": "pgbouncer", "user": user, "port": port, "host": host}
        self._connection: Any = None

    def _connect(self) -> Any:
        if self._connection is None or self._connection.closed:
            self._connection = psycopg2.connect(**self._params)
            # PgBouncer's console has no transactions.
            self._connection.set_session(autocommit=True)
        return self._connection

    def cursor(self) -> Any:
        try:
            return self._connect().cursor()
        except psycopg2.Error:
            self.close()
            raise

    def close(self) -> None:
        if self._connection is not None:
            try:
                self._connection.close()
            finally:
                self._connection = None


def _checked(collect: Any) -> Any:
    def collect_or_reconnect(self: Any) -> Any:
        try:
            yield from collect(self)
        except psycopg2.Error:
            self.connection.close()
            raise
    return collect_or_reconnect


def main() -> None:
    collectors.StatsCollector.metrics = STATS
    collectors.PoolsCollector.metrics = POOLS
    for collector in (collectors.NamedColumnCollector, collectors.ListsCollector):
        collector.collect = _checked(collector.collect)
    cli.get_connection = ReconnectingConnection
    sys.argv[0] = "prometheus-pgbouncer-exporter"
    cli.main()


if __name__ == "__main__":
    main()
