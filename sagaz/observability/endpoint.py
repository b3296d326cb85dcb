"""Assembles the metrics endpoint of a process: its own metrics (a :class:`Metrics`), what is
read on scrape from its storage (the outbox backlog) and, given where they are, the HA figures
(:mod:`sagaz.observability.ha_metrics`), behind one :class:`MetricsServer`."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry

from sagaz.observability.scrape import DEFAULT_TIMEOUT, Component, ScrapeCollector, outbox_backlog
from sagaz.observability.server import DEFAULT_HOST, MetricsServer, Probe, storage_ready
from sagaz.outbox.store import ReportsBacklog, StorageWithOutbox

if TYPE_CHECKING:
    from sagaz.config import SagaConfig
    from sagaz.observability.ha_metrics import HaTargets
    from sagaz.observability.metrics import Metrics

__all__ = ["serve_metrics"]


def serve_metrics(
    *, port: int, host: str = DEFAULT_HOST, metrics: Metrics | None = None,
    config: SagaConfig | None = None, loop: asyncio.AbstractEventLoop | None = None,
    healthy: Probe | None = None, ha: Callable[[], HaTargets] | None = None,
    timeout: float = DEFAULT_TIMEOUT, clock: Callable[[], float] = time.time,
) -> MetricsServer:
    """Start serving and return the server (``stop()`` it). ``config``'s storage gives the
    outbox gauges and the readiness; its coroutines run on ``loop`` (default: the running one).
    ``ha`` is called on each scrape (the cluster may have failed over since the last one)."""
    registry = metrics.registry if metrics is not None else CollectorRegistry()
    loop = loop or asyncio.get_running_loop()
    fixed: list[Component] = []
    ready: Probe | None = None
    if config is not None:
        storage = config.write_storage
        if isinstance(storage, StorageWithOutbox):
            store = storage.outbox_store()
            if isinstance(store, ReportsBacklog):
                fixed.append(outbox_backlog(store, loop, timeout))
        ready = storage_ready(storage, loop)

    def components() -> list[Component]:
        if ha is None:
            return fixed
        from sagaz.observability.ha_metrics import ha_components

        return [*fixed, *ha_components(ha(), timeout=timeout, clock=clock)]

    registry.register(ScrapeCollector(components))
    server = MetricsServer(registry, host=host, port=port)
    if healthy is not None:
        server.healthy = healthy
    if ready is not None:
        server.ready = ready
    server.start()
    return server
