"""Metrics read on scrape, each component within its own deadline.

A component (the outbox backlog, one PostgreSQL node, one PgBouncer...) is a function that
reads its figures and returns metric families. On each scrape every component runs at once in
a thread of its own; a component that fails, or has not answered by its ``timeout``, yields
``sagaz_scrape_error{component} 1`` instead of its figures, and the scrape answers anyway:
Prometheus then sees what is broken instead of a scrape that timed out. A component still busy
from an earlier scrape (a server that hangs) is not started twice: it counts as an error until
its call returns.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Coroutine, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from sagaz.outbox.store import ReportsBacklog

__all__ = ["Component", "ScrapeCollector", "on_loop", "outbox_backlog"]

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 3.0
"""Seconds a component may take; Prometheus' own scrape timeout is 10 s by default."""


@dataclass(frozen=True)
class Component:
    name: str
    """The ``component`` label of sagaz_scrape_error: bounded (outbox, replication,
    pgbouncer_rw, postgres_node1...)."""
    read: Callable[[], Iterable[Metric]]
    timeout: float = DEFAULT_TIMEOUT
    when_failed: Callable[[], Iterable[Metric]] | None = None
    """What to export instead when it fails or times out (a node down: ``up 0``)."""


class ScrapeCollector(Collector):
    """A Prometheus collector running its components concurrently on each scrape."""

    def __init__(self, components: Callable[[], list[Component]] | list[Component]):
        self._components = components
        self._pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix="sagaz-scrape")
        self._busy: dict[str, Future[list[Metric]]] = {}
        self._lock = threading.Lock()
        self._down: set[str] = set()
        """Components failing now: said once per outage, not once per scrape."""

    def components(self) -> list[Component]:
        found = self._components() if callable(self._components) else self._components
        return list(found)

    def describe(self) -> list[Metric]:
        # Nothing to describe up front: registering must not run a scrape.
        return []

    def collect(self) -> Iterator[Metric]:
        # One scrape at a time (two Prometheus servers): a second one started meanwhile would
        # find every component busy and report them all broken.
        with self._lock:
            families = list(self._collect())
        yield from families

    def _collect(self) -> Iterator[Metric]:
        started = time.monotonic()
        errors = GaugeMetricFamily(
            "sagaz_scrape_error",
            "1 when a component could not be read within its deadline on this scrape.",
            labels=["component"])
        try:
            components = self.components()
        except Exception as exc:
            # The list itself could not be made (a cluster file unreadable): say so.
            logger.warning("metrics components unavailable: %s", exc,
                           extra={"action": "metrics_components_failed"})
            errors.add_metric(["components"], 1)
            yield errors
            return
        running: dict[str, Future[list[Metric]] | None] = {}
        for component in components:
            busy = self._busy.get(component.name)
            if busy is not None and not busy.done():
                running[component.name] = None  # still stuck in an earlier scrape
                continue
            submitted = self._pool.submit(_read, component)
            self._busy[component.name] = submitted
            running[component.name] = submitted
        merged: dict[str, Metric] = {}
        for component in components:
            future = running[component.name]
            failed = True
            if future is not None:
                left = component.timeout - (time.monotonic() - started)
                try:
                    families = future.result(timeout=max(0.0, left))
                    failed = False
                except FutureTimeout:
                    self._failed(component, f"not read within {component.timeout:g}s")
                except Exception as exc:
                    self._failed(component, str(exc) or type(exc).__name__)
                if not failed:
                    _merge(merged, families)
                    self._recovered(component)
            else:
                self._failed(component, "still busy since an earlier scrape")
            if failed and component.when_failed is not None:
                _merge(merged, list(component.when_failed()))
            errors.add_metric([component.name], 1 if failed else 0)
        yield from merged.values()
        yield errors


    def _failed(self, component: Component, why: str) -> None:
        if component.name in self._down:
            logger.debug("metrics of %s still unavailable: %s", component.name, why,
                         extra={"action": "metrics_scrape_failed"})
            return
        self._down.add(component.name)
        logger.warning("metrics of %s unavailable: %s; sagaz_scrape_error says so until it "
                       "answers again", component.name, why,
                       extra={"action": "metrics_scrape_failed"})

    def _recovered(self, component: Component) -> None:
        if component.name in self._down:
            self._down.discard(component.name)
            logger.warning("metrics of %s readable again", component.name,
                           extra={"action": "metrics_scrape_back"})


def _read(component: Component) -> list[Metric]:
    return list(component.read())


def _merge(into: dict[str, Metric], families: list[Metric]) -> None:
    """Families of one name from several components (one per node or pool) become one."""
    for family in families:
        known = into.get(family.name)
        if known is None:
            into[family.name] = family
        else:
            known.samples.extend(family.samples)


def on_loop(
    loop: asyncio.AbstractEventLoop, make: Callable[[], Coroutine[Any, Any, Any]],
    timeout: float,
) -> Any:
    """Run a coroutine on ``loop`` (the storage's, from a scrape thread) and wait for it; a
    call past ``timeout`` is cancelled there."""
    future = asyncio.run_coroutine_threadsafe(make(), loop)
    try:
        return future.result(timeout=timeout)
    except FutureTimeout:
        future.cancel()
        raise


def outbox_backlog(store: ReportsBacklog, loop: asyncio.AbstractEventLoop,
                   timeout: float = DEFAULT_TIMEOUT) -> Component:
    """``sagaz_outbox_pending_events`` and ``sagaz_outbox_dead_letter_events``, read from the
    outbox table on each scrape."""

    def read() -> list[Metric]:
        pending, dead = on_loop(loop, store.backlog, timeout)
        return [
            GaugeMetricFamily("sagaz_outbox_pending_events",
                              "Outbox events not sent yet (pending, claimed or retrying).",
                              value=pending),
            GaugeMetricFamily("sagaz_outbox_dead_letter_events",
                              "Outbox events in DEAD_LETTER (see sagaz outbox dlq).",
                              value=dead)]

    return Component("outbox", read, timeout)
