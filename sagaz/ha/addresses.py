"""Addresses and connection strings of the local cluster: whether a port is free to listen on,
a base port under which a whole cluster's ports are free, and a conninfo as the
``postgresql://`` URL the SAGAZ_* variables take. No database driver at import time (``sagaz
init`` imports the local cluster's names)."""

from __future__ import annotations

import errno
import random
import socket
from collections.abc import Callable, Iterable

__all__ = ["accepts_connections", "conninfo_url", "find_free_base_port", "kernel_chosen_port",
           "port_free"]

_SEARCH_SPAN = 3000


def accepts_connections(host: str, port: int, timeout: float) -> bool:
    """Whether something listens on host:port and accepts a TCP connection within ``timeout``."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


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


def kernel_chosen_port() -> int:
    """A port on 127.0.0.1 that the kernel reports free now, for one server we start next."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def find_free_base_port(lowest: int, step: int,
                   addresses: Callable[[int], Iterable[tuple[str, int]]]) -> int:
    """A base port for which every (host, port) of ``addresses(base)`` is free: the search starts
    at a random base in [lowest, lowest + 3000) so that clusters started at the same time on one
    machine rarely probe the same ports, and goes up by ``step``."""
    start = random.randrange(lowest, lowest + _SEARCH_SPAN)
    for base in range(start, start + _SEARCH_SPAN, step):
        if all(port_free(host, port) for host, port in addresses(base)):
            return base
    raise RuntimeError(f"no free loopback ports for a cluster from base port {start} up")


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
