"""A local cluster for one measurement or check: made in a new temporary directory, started,
and taken down and removed afterwards, also when what runs on it fails."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sagaz.ha.local import LocalCluster

__all__ = ["scratch_cluster"]


@contextmanager
def scratch_cluster(replicas: int, base_port: int, *, prefix: str) -> Iterator[LocalCluster]:
    """A running cluster of a primary and ``replicas`` on ``base_port``, in a directory named
    ``prefix...`` under the system's temporary directory."""
    parent = Path(tempfile.mkdtemp(prefix=prefix))
    parent.chmod(0o755)  # the servers run as an unprivileged user when we are root
    cluster = LocalCluster.new(parent / "cluster", replicas=replicas, base_port=base_port)
    try:
        cluster.up()
        yield cluster
    finally:
        cluster.down()
        shutil.rmtree(parent, ignore_errors=True)
