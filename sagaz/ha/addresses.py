"""Addresses and connection strings of the local cluster: whether a port is free to listen on,
and a conninfo as the ``postgresql://`` URL the SAGAZ_* variables take. No database driver at
import time (``sagaz init`` imports the local cluster's names)."""

from __future__ import annotations

import errno
import socket

__all__ = ["conninfo_url", "port_free"]


def port_free(host: str, port: int) -> bool:
    """Whether a server could listen on host:port (SO_REUSEADDR, as PostgreSQL and PgBouncer set
    it: connections of a stopped server in TIME_WAIT do not count)."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return False
            raise
    return True


def conninfo_url(conninfo: str) -> str:
    """A ``postgresql://`` URL for a key=value conninfo (the SAGAZ_* variables take URLs)."""
    from urllib.parse import quote, urlencode

    from psycopg.conninfo import conninfo_to_dict

    p = conninfo_to_dict(conninfo)
    url = (f"postgresql://{quote(str(p['user']), safe='')}:{quote(str(p['password']), safe='')}"
           f"@{p['host']}:{p['port']}/{quote(str(p['dbname']), safe='')}")
    tls: dict[str, str] = {k: str(p[k]) for k in ("sslmode", "sslrootcert") if k in p}
    query = urlencode(tls, safe="/")
    return f"{url}?{query}" if query else url
