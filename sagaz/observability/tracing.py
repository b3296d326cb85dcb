"""OpenTelemetry spans for sagas, steps, the outbox relay and consumers (extra ``sagaz[otel]``).

One :class:`SagaTracer` hangs off the three hooks sagaz already has, so no code path calls
tracing directly:

- the engine's listeners (``SagaConfig(listeners=[tracer])``): a span per saga (child of the
  caller's current span) and one per step attempt and per compensation, child of the saga's;
  the events a step emits carry the step span's W3C ``traceparent`` in their headers, stored
  with the outbox row in the same transaction;
- the relay's publish hooks (``OutboxWorker(publish_hooks=[tracer])``): a PRODUCER span per
  event, child of the stored ``traceparent``, whose own context replaces it in the message;
- the consumer's hooks (``consume(..., hooks=[tracer])``): a CONSUMER span per delivery, child
  of the relay's span, current while the inbox and the handler run.

So one trace runs saga -> step -> relay -> consumer, across processes and the broker. Only this
module imports ``opentelemetry``; import it only when tracing is wanted.
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from sagaz.engine.listeners import SagaListener
from sagaz.outbox.event import OutboxEvent

__all__ = ["TRACEPARENT", "SagaTracer"]

TRACEPARENT = "traceparent"
_PROPAGATOR = TraceContextTextMapPropagator()
# Spans whose end never comes (an executor that lost its lease, a step cancelled before its
# outcome) must not pile up in a long-running worker: the oldest open ones are ended beyond this.
_MAX_OPEN = 10_000


class _OpenSpans:
    """Spans started by one hook and ended by a later one, by key, bounded."""

    def __init__(self) -> None:
        self._spans: OrderedDict[Any, Span] = OrderedDict()

    def put(self, key: Any, span: Span) -> None:
        old = self._spans.pop(key, None)
        if old is not None:
            old.end()
        self._spans[key] = span
        while len(self._spans) > _MAX_OPEN:
            _, oldest = self._spans.popitem(last=False)
            oldest.end()

    def get(self, key: Any) -> Span | None:
        return self._spans.get(key)

    def pop(self, key: Any) -> Span | None:
        return self._spans.pop(key, None)

    def of_saga(self, saga_id: str) -> list[Any]:
        """The keys ``(saga_id, step)`` of one saga's open spans."""
        return [key for key in self._spans if key[0] == saga_id]

    def __len__(self) -> int:
        return len(self._spans)


def _headers_of(span: Span) -> dict[str, str]:
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier, context=trace.set_span_in_context(span))
    return carrier


def _parent_of(headers: dict[str, str]) -> Context | None:
    if TRACEPARENT not in headers:
        return None
    return _PROPAGATOR.extract(headers)


def _fail(span: Span, error: BaseException) -> None:
    span.record_exception(error)
    span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))


class SagaTracer(SagaListener):
    """Spans for sagas, steps, relay publishes and consumer deliveries (see the module's text).
    ``tracer_provider`` defaults to the global one that the application configured."""

    def __init__(self, tracer_provider: trace.TracerProvider | None = None):
        self._tracer = trace.get_tracer("sagaz", tracer_provider=tracer_provider)
        self._sagas = _OpenSpans()
        self._steps = _OpenSpans()
        self._publishes = _OpenSpans()

    # -- the engine's listener ---------------------------------------------------------------

    def saga_started(self, saga_name: str, saga_id: str, context: dict[str, Any]) -> None:
        span = self._tracer.start_span(
            f"saga {saga_name}", attributes={"sagaz.saga": saga_name, "sagaz.saga_id": saga_id})
        self._sagas.put(saga_id, span)

    def _step_span(self, saga_name: str, saga_id: str, step: str, name: str,
                   **attributes: Any) -> Span:
        saga = self._sagas.get(saga_id)
        parent = trace.set_span_in_context(saga) if saga is not None else None
        return self._tracer.start_span(
            name, context=parent,
            attributes={"sagaz.saga": saga_name, "sagaz.saga_id": saga_id, "sagaz.step": step,
                        **attributes})

    def step_started(self, saga_name: str, saga_id: str, step: str, attempt: int) -> None:
        span = self._step_span(saga_name, saga_id, step, f"step {step}", **{
            "sagaz.attempt": attempt})
        self._steps.put((saga_id, step), span)

    def step_completed(self, saga_name: str, saga_id: str, step: str, duration: float) -> None:
        span = self._steps.pop((saga_id, step))
        if span is not None:
            span.end()

    def step_failed(
        self, saga_name: str, saga_id: str, step: str, error: BaseException, final: bool
    ) -> None:
        span = self._steps.pop((saga_id, step))
        if span is not None:
            _fail(span, error)
            span.set_attribute("sagaz.final", final)
            span.end()

    def compensation_started(self, saga_name: str, saga_id: str, step: str) -> None:
        span = self._step_span(saga_name, saga_id, step, f"compensate {step}")
        self._steps.put((saga_id, step), span)

    def compensation_completed(
        self, saga_name: str, saga_id: str, step: str, error: BaseException | None
    ) -> None:
        span = self._steps.pop((saga_id, step))
        if span is not None:
            if error is not None:
                _fail(span, error)
            span.end()

    def saga_finished(self, saga_name: str, saga_id: str, status: str, duration: float) -> None:
        span = self._sagas.pop(saga_id)
        if span is not None:
            span.set_attribute("sagaz.status", status)
            if status != "COMPLETED":
                span.set_status(Status(StatusCode.ERROR, f"saga {status}"))
            span.end()

    def saga_interrupted(self, saga_name: str, saga_id: str, error: BaseException) -> None:
        # This process stopped running it (lease lost, storage failed, cancelled): its spans
        # end here; recovery, elsewhere, starts a new saga span.
        for key in self._steps.of_saga(saga_id):
            span = self._steps.pop(key)
            if span is not None:
                _fail(span, error)
                span.end()
        span = self._sagas.pop(saga_id)
        if span is not None:
            _fail(span, error)
            span.set_attribute("sagaz.status", "INTERRUPTED")
            span.end()

    def outbox_headers(self, saga_name: str, saga_id: str, step: str | None) -> dict[str, str]:
        span = self._steps.get((saga_id, step)) if step is not None else None
        if span is None:
            span = self._sagas.get(saga_id)
        return _headers_of(span) if span is not None else {}

    # -- the relay's publish hook --------------------------------------------------------------

    def publishing(self, events: Sequence[OutboxEvent]) -> list[OutboxEvent]:
        out = []
        for event in events:
            span = self._tracer.start_span(
                f"publish {event.event_type}", context=_parent_of(event.headers),
                kind=SpanKind.PRODUCER,
                attributes={"messaging.operation": "publish",
                            "messaging.message.id": event.event_id,
                            "sagaz.event_type": event.event_type,
                            **({"sagaz.saga_id": event.saga_id} if event.saga_id else {})})
            self._publishes.put(event.event_id, span)
            out.append(OutboxEvent.restore(
                event.event_type, event.payload, event.key, event.saga_id,
                {**event.headers, **_headers_of(span)}, event.event_id, event.created_at))
        return out

    def published(
        self, events: Sequence[OutboxEvent], outcomes: Sequence[BaseException | None]
    ) -> None:
        for event, outcome in zip(events, outcomes, strict=True):
            span = self._publishes.pop(event.event_id)
            if span is None:
                continue
            if outcome is not None:
                _fail(span, outcome)
            span.end()

    # -- the consumer's hook -------------------------------------------------------------------

    @contextlib.contextmanager
    def handling(self, consumer_name: str, event: OutboxEvent) -> Iterator[Span]:
        with self._tracer.start_as_current_span(
            f"consume {event.event_type}", context=_parent_of(event.headers),
            kind=SpanKind.CONSUMER,
            attributes={"messaging.operation": "process",
                        "messaging.consumer.group.name": consumer_name,
                        "messaging.message.id": event.event_id,
                        "sagaz.event_type": event.event_type},
        ) as span:
            yield span

    def open_spans(self) -> int:
        """Spans started and not yet ended (sagas, steps, publishes): for tests and leaks."""
        return len(self._sagas) + len(self._steps) + len(self._publishes)
