"""The Prometheus metrics of sagaz, hung off the hooks the code already has: the engine's
listeners (:class:`~sagaz.engine.listeners.SagaListener`), the storages' group-commit hooks
(:class:`~sagaz.storage.capabilities.ObservesCommits`), the relay's publish listeners and the
consumer inbox's listeners. Nothing in the engine calls a metric.

    metrics = Metrics()
    metrics.instrument(config)            # sagas and the storage's write path
    metrics.instrument_relay(relay)       # sagaz.Worker does this for its relay
    metrics.instrument_inbox(inbox)       # a consumer's inbox

Each :class:`Metrics` has its own registry, so two instances (two workers in one test process)
never share counts. Labels are bounded: saga and step names come from definitions, statuses from
an enum, brokers from a fixed list, consumers from the program; never a saga or event id.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from sagaz.engine.listeners import SagaListener
from sagaz.storage.capabilities import ObservesCommits

if TYPE_CHECKING:
    from sagaz.config import SagaConfig
    from sagaz.outbox.event import OutboxEvent
    from sagaz.outbox.inbox import ConsumerInbox
    from sagaz.outbox.worker import OutboxWorker

__all__ = ["Metrics", "SagaMetricsListener", "broker_label"]

logger = logging.getLogger(__name__)

_SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            60.0, 300.0)
_SAGA_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                 300.0, 1800.0, 3600.0)
_BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)

_BROKERS = {"InMemoryBroker": "memory", "RabbitMQBroker": "rabbitmq",
            "RedisStreamsBroker": "redis", "NATSBroker": "nats", "KafkaBroker": "kafka"}


def broker_label(broker: object) -> str:
    """The ``broker`` label of a broker object: its kind, never its URL (bounded, no secret)."""
    name = type(broker).__name__
    return _BROKERS.get(name) or name.removesuffix("Broker").lower() or "other"


class Metrics:
    """Every process-side metric of sagaz, in one registry (:attr:`registry`)."""

    def __init__(self, registry: CollectorRegistry | None = None,
                 clock: Callable[[], float] = time.time):
        self.registry = registry if registry is not None else CollectorRegistry()
        self.clock = clock
        """Wall clock of the publish latency (events carry their commit time as epoch)."""
        r = self.registry
        self.saga_total = Counter(
            "sagaz_saga_total", "Sagas that ended, by final status.", ["saga", "status"],
            registry=r)
        self.saga_duration = Histogram(
            "sagaz_saga_duration_seconds", "From start to committed final status.", ["saga"],
            buckets=_SAGA_SECONDS, registry=r)
        self.step_duration = Histogram(
            "sagaz_step_duration_seconds",
            "Of a completed step: first attempt start to committed completion.",
            ["saga", "step"], buckets=_SECONDS, registry=r)
        self.step_retries = Counter(
            "sagaz_step_retries_total", "Failed step attempts that are retried.",
            ["saga", "step"], registry=r)
        self.compensations = Counter(
            "sagaz_compensations_total", "Compensations run (successful or not).",
            ["saga", "step"], registry=r)
        self.sagas_running = Gauge(
            "sagaz_sagas_running", "Sagas this process is executing now.", registry=r)
        self.recovered = Counter(
            "sagaz_recovered_sagas_total",
            "Sagas this process took over from an executor that died.", registry=r)
        self.batch_size = Histogram(
            "sagaz_storage_batch_size", "Writes committed together per group-commit batch.",
            buckets=_BATCH_SIZES, registry=r)
        self.commit_seconds = Histogram(
            "sagaz_storage_commit_seconds", "Duration of one group-commit batch.",
            buckets=_SECONDS, registry=r)
        self.published = Counter(
            "sagaz_outbox_published_total", "Outbox events the broker acknowledged.",
            ["broker"], registry=r)
        self.failed = Counter(
            "sagaz_outbox_failed_total",
            "Outbox event publishes that failed (refused, unacknowledged, broker unreachable).",
            ["broker"], registry=r)
        self.publish_latency = Histogram(
            "sagaz_outbox_publish_latency_seconds",
            "From the commit that wrote an event to the broker's acknowledgement.",
            buckets=_SECONDS, registry=r)
        self.inbox_processed = Counter(
            "sagaz_inbox_processed_total", "Events a consumer's handler processed (committed).",
            ["consumer"], registry=r)
        self.inbox_duplicates = Counter(
            "sagaz_inbox_duplicates_total", "Redelivered events the inbox dropped.",
            ["consumer"], registry=r)
        self.listener = SagaMetricsListener(self)
        self.sagas_running.set_function(self.listener.running_count)

    # -- hooking on ------------------------------------------------------------------------------

    def instrument(self, config: SagaConfig) -> None:
        """Count the sagas run with ``config`` and its storage's group commits (idempotent)."""
        if not any(listener is self.listener for listener in config.listeners):
            config.listeners.append(self.listener)
        storage = config.write_storage
        if isinstance(storage, ObservesCommits) and self._on_batch not in storage.batch_hooks:
            storage.batch_hooks.append(self._on_batch)

    def instrument_relay(self, relay: OutboxWorker) -> None:
        """Count what ``relay`` publishes and fails to, and the commit-to-ack latency."""
        broker = broker_label(relay.broker)
        published = self.published.labels(broker)
        failed = self.failed.labels(broker)

        def acked(events: Sequence[OutboxEvent]) -> None:
            if not events:
                return
            published.inc(len(events))
            now = self.clock()
            for event in events:
                self.publish_latency.observe(max(0.0, now - event.created_at))

        def not_acked(events: Sequence[OutboxEvent]) -> None:
            failed.inc(len(events))

        relay.listeners.append(acked)
        relay.failure_listeners.append(not_acked)
        # Both series exist from the start: a rate() over a series that appears late is wrong.
        published.inc(0)
        failed.inc(0)

    def instrument_inbox(self, inbox: ConsumerInbox) -> None:
        """Count what ``inbox`` processed and dropped as duplicates."""
        processed = self.inbox_processed.labels(inbox.consumer_name)
        duplicates = self.inbox_duplicates.labels(inbox.consumer_name)

        def seen(consumer: str, ran: bool) -> None:
            (processed if ran else duplicates).inc()

        inbox.listeners.append(seen)
        processed.inc(0)
        duplicates.inc(0)

    def _on_batch(self, size: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.commit_seconds.observe(seconds)


class SagaMetricsListener(SagaListener):
    """The saga metrics, from the engine's lifecycle callbacks."""

    def __init__(self, metrics: Metrics):
        self.metrics = metrics
        # Ids of the sagas running here: a set, so that a saga reported twice (recovery picking
        # up one this process also started) counts once, and an interrupted one is forgotten.
        self._running: set[str] = set()

    def running_count(self) -> int:
        return len(self._running)

    def saga_started(self, saga_name: str, saga_id: str, context: dict[str, Any]) -> None:
        self._running.add(saga_id)

    def saga_recovered(self, saga_name: str, saga_id: str) -> None:
        self.metrics.recovered.inc()

    def step_completed(self, saga_name: str, saga_id: str, step: str, duration: float) -> None:
        self.metrics.step_duration.labels(saga_name, step).observe(duration)

    def step_failed(
        self, saga_name: str, saga_id: str, step: str, error: BaseException, final: bool
    ) -> None:
        if not final:
            self.metrics.step_retries.labels(saga_name, step).inc()

    def compensation_completed(
        self, saga_name: str, saga_id: str, step: str, error: BaseException | None
    ) -> None:
        self.metrics.compensations.labels(saga_name, step).inc()

    def saga_finished(self, saga_name: str, saga_id: str, status: str, duration: float) -> None:
        self._running.discard(saga_id)
        self.metrics.saga_total.labels(saga_name, status).inc()
        self.metrics.saga_duration.labels(saga_name).observe(duration)

    def saga_interrupted(self, saga_name: str, saga_id: str, error: BaseException) -> None:
        self._running.discard(saga_id)
