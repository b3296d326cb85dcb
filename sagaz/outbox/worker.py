"""The outbox relay: claims committed events, publishes them with the broker's acknowledgement,
marks them sent.

Guarantees and costs:
- **At least once on the wire.** A row is marked SENT only after the broker acknowledged it. A
  worker that dies between publish and mark leaves the row CLAIMED; when its claim expires
  (``claim_seconds``) another worker publishes it again. Consumers deduplicate on ``event_id``
  (the consumer inbox), which makes the effect exactly once.
- **No row published by two workers at once.** Claims are exclusive (PostgreSQL: ``FOR UPDATE
  SKIP LOCKED``; SQLite: one write transaction, which SQLite serializes across processes);
  marks are fenced by the claim (a worker whose claim was taken over marks nothing).
- **Per-key order.** An event is claimed only when no earlier event of its key is unsent, so a
  key has at most one event in flight: keys are published in order, different keys in parallel.
  The cost: the events of one key leave at most one per round trip (claim, publish, mark).
- **Failures.** A broker refusal of an event (or a timeout waiting for its acknowledgement)
  counts an attempt; it is retried with exponential backoff per event (``base_backoff`` *
  2^(attempts-1), at most ``max_backoff``), and after ``max_attempts`` goes to DEAD_LETTER with
  its last error (``sagaz outbox dlq``). Nothing else counts: a lost broker connection gives the
  claims back and the worker reconnects with backoff; a worker that dies leaves its claims to
  expire and be taken over, at no attempt either.

The relay works against :class:`~sagaz.outbox.store.OutboxStore`; the PostgreSQL and the SQLite
storages hand one out (``storage.outbox_store()``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from sagaz.errors import SagazError, StorageError
from sagaz.outbox.brokers import BrokerAckTimeout
from sagaz.outbox.brokers.base import Broker
from sagaz.outbox.event import OutboxEvent
from sagaz.outbox.store import (
    AnnouncesCommittedEvents,
    ClaimedEvent,
    ClaimsGivenEvents,
    OutboxStore,
)

__all__ = ["BrokerUnavailable", "OutboxStore", "OutboxWorker", "PublishHook"]

logger = logging.getLogger(__name__)


def _worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{random.randrange(16**6):06x}"


@dataclass
class OutboxWorker:
    outbox: OutboxStore
    broker: Broker
    worker_id: str = field(default_factory=_worker_id)
    batch_size: int = 500
    concurrency: int = 2
    """Relay loops in flight: one publishes while another claims or marks."""
    claim_seconds: float = 30.0
    poll_interval: float = 1.0
    """Longest sleep when idle; a NOTIFY (LISTEN on a direct DSN) wakes the worker earlier."""
    max_attempts: int = 10
    base_backoff: float = 1.0
    max_backoff: float = 300.0
    listeners: list[Callable[[Sequence[OutboxEvent]], None]] = field(default_factory=list)
    """Called with the events the broker acknowledged, right after the acknowledgement (metrics,
    tracing, benchmarks); a listener that raises is logged and ignored."""
    publish_hooks: list[PublishHook] = field(default_factory=list)
    """Around each publish: they may rewrite the events just before (tracing puts the relay's
    own span into the ``traceparent``) and see every outcome after."""
    failure_listeners: list[Callable[[Sequence[OutboxEvent]], None]] = field(default_factory=list)
    """Called with the events whose publish failed: refused, not acknowledged in time, or not
    sent because the broker was unreachable (metrics); raising is logged and ignored."""
    relayed: int = 0
    dead_lettered: int = 0
    # Wake-up tokens for idle loops (at most one pending): each token lets ONE loop claim, so
    # an idle worker costs one claim query per poll interval, not one per loop.
    _tokens: asyncio.Queue[None] = field(default_factory=lambda: asyncio.Queue(maxsize=1))
    broker_down: bool = False
    """True from a failed connection or publish until the next publish the broker accepts."""

    def _broker_lost(self, exc: BaseException, given_back: int) -> None:
        # Said once per outage, not once per retry: the loops retry with backoff, and a log
        # line per attempt would bury everything else while the broker is away.
        if self.broker_down:
            logger.debug("broker still unavailable (%s); %d claimed events given back", exc,
                         given_back, extra={"action": "outbox_broker_down"})
            return
        self.broker_down = True
        logger.warning("broker unavailable (%s); the relay keeps retrying with backoff (up to "
                       "%gs apart) and says when it is back", exc, _MAX_RETRY_DELAY,
                       extra={"action": "outbox_broker_down"})

    def _broker_back(self) -> None:
        if self.broker_down:
            self.broker_down = False
            logger.warning("broker reachable again; relaying",
                           extra={"action": "outbox_broker_back"})

    async def run(self, stop: asyncio.Event) -> None:
        """Relay until ``stop`` is set; the batches in flight finish first."""
        try:
            await self.broker.connect()
        except Exception as exc:
            # Not fatal: every publish reconnects, and the loops back off until it works.
            self._broker_lost(exc, 0)
        waiter = asyncio.create_task(self._listen(stop))
        try:
            await asyncio.gather(*(self._loop(stop) for _ in range(self.concurrency)))
        finally:
            waiter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await waiter

    async def _listen(self, stop: asyncio.Event) -> None:
        # One waiter for all loops: a LISTEN connection serves one reader at a time.
        while not stop.is_set():
            try:
                await self.outbox.wait(self.poll_interval)
            except Exception:
                # Never let the waiter die: without it no loop would claim again. Poll instead.
                logger.exception("outbox wake-up wait failed; polling",
                                 extra={"action": "outbox_wait_failed"})
                await _sleep_or_stop(stop, self.poll_interval)
            self._wake_one()

    def _wake_one(self) -> None:
        with contextlib.suppress(asyncio.QueueFull):
            self._tokens.put_nowait(None)

    async def _idle(self, stop: asyncio.Event) -> None:
        """Wait for a wake-up token (a NOTIFY, the poll interval, or a busy sibling)."""
        while not stop.is_set():
            try:
                await asyncio.wait_for(self._tokens.get(), self.poll_interval)
                return
            except TimeoutError:
                continue  # only to notice stop: no query

    async def _loop(self, stop: asyncio.Event) -> None:
        delay = 0.1
        while not stop.is_set():
            try:
                count = await self.relay_once()
                delay = 0.1
            except BrokerUnavailable:
                await _sleep_or_stop(stop, delay)
                delay = min(delay * 2, _MAX_RETRY_DELAY)
                continue
            except Exception:
                # Database trouble: the storage already retried; keep the worker alive.
                logger.exception("outbox relay pass failed; retrying in %.1fs", delay,
                                 extra={"action": "outbox_pass_failed"})
                await _sleep_or_stop(stop, delay)
                delay = min(delay * 2, _MAX_RETRY_DELAY)
                continue
            if count == 0:
                await self._idle(stop)
            elif count >= self.batch_size:
                self._wake_one()  # a full batch: there may be more, recruit an idle sibling

    def send_optimistically(self, storage: AnnouncesCommittedEvents) -> None:
        """Publish the events ``storage`` (PostgreSQL or SQLite) commits right after their
        commit, in a task of their own, instead of waiting for the next claim. Only an
        optimisation: an event this send could not claim or publish stays in the outbox and
        the relay loop sends it (the guarantee stays with the loop)."""
        tasks: set[asyncio.Task[None]] = set()

        def committed(event_ids: list[str]) -> None:
            task = asyncio.get_running_loop().create_task(self._send_now(event_ids))
            tasks.add(task)  # keep a reference until it is done
            task.add_done_callback(tasks.discard)

        storage.committed_event_hooks.append(committed)

    async def _send_now(self, event_ids: list[str]) -> None:
        if not isinstance(self.outbox, ClaimsGivenEvents):
            return
        try:
            claimed = await self.outbox.claim_ids(self.worker_id, event_ids, self.claim_seconds)
            if claimed:
                await self._publish(claimed)
        except (BrokerUnavailable, StorageError) as exc:
            # Expected when the broker or the database is away: the loop sends them later.
            logger.debug("optimistic send of %d events failed: %s", len(event_ids), exc,
                         extra={"action": "outbox_optimistic_failed"})
        except Exception:
            # Anything else is a bug; the loop still sends the events, but say so loudly.
            logger.exception("optimistic send of %d events failed", len(event_ids),
                             extra={"action": "outbox_optimistic_failed"})

    async def relay_once(self) -> int:
        """Claim one batch, publish it, mark the outcome; returns how many events were claimed."""
        claimed = await self.outbox.claim(self.worker_id, self.batch_size, self.claim_seconds)
        if not claimed:
            return 0
        await self._publish(claimed)
        return len(claimed)

    async def _publish(self, claimed: Sequence[ClaimedEvent]) -> None:
        """Publish claimed events and mark the outcome of each."""
        events = [c.event for c in claimed]
        for hook in self.publish_hooks:
            events = list(hook.publishing(events))
        try:
            outcomes = await self.broker.publish_batch(events)
        except BrokerAckTimeout as exc:
            # Taken, never confirmed: a failed delivery of each event (counted, backed off,
            # dead-lettered after max_attempts), not an outage that gives the claims back.
            logger.warning("%s; %d events count a failed attempt", exc, len(events),
                           extra={"action": "outbox_ack_timeout", "events": len(events)})
            outcomes = [exc] * len(events)
        except Exception as exc:
            self._published(events, [exc] * len(events))
            await self.outbox.release(self.worker_id, [e.event_id for e in events])
            self._broker_lost(exc, len(events))
            _tell(self.failure_listeners, events)
            raise BrokerUnavailable(f"{type(exc).__name__}: {exc}") from exc
        self._broker_back()
        self._published(events, outcomes)
        acked = [e for e, o in zip(events, outcomes, strict=True) if o is None]
        _tell(self.listeners, acked)
        if len(acked) < len(events):
            _tell(self.failure_listeners,
                  [e for e, o in zip(events, outcomes, strict=True) if o is not None])
        sent = [e.event_id for e in acked]
        failed = [(e.event_id, f"{type(o).__name__}: {o}")
                  for e, o in zip(events, outcomes, strict=True) if o is not None]
        await self.outbox.mark_sent(self.worker_id, sent)
        if failed:
            dead = await self.outbox.mark_failed(
                self.worker_id, failed, max_attempts=self.max_attempts,
                base_backoff=self.base_backoff, max_backoff=self.max_backoff)
            self.dead_lettered += len(dead)
            for event_id in dead:
                logger.error("event %s moved to DEAD_LETTER after %d attempts", event_id,
                             self.max_attempts,
                             extra={"action": "outbox_dead_letter", "event_id": event_id})
        self.relayed += len(sent)


    def _published(
        self, events: Sequence[OutboxEvent], outcomes: Sequence[BaseException | None]
    ) -> None:
        for hook in self.publish_hooks:
            try:
                hook.published(events, outcomes)
            except Exception:
                logger.exception("outbox publish hook %r failed", hook,
                                 extra={"action": "outbox_listener_failed"})


class PublishHook(Protocol):
    """Wraps the relay's publish of a batch (tracing)."""

    def publishing(self, events: Sequence[OutboxEvent]) -> Sequence[OutboxEvent]:
        """The events to publish instead (same ids and order; e.g. with headers added)."""
        ...

    def published(
        self, events: Sequence[OutboxEvent], outcomes: Sequence[BaseException | None]
    ) -> None:
        """Each event's outcome: None when the broker acknowledged it, else the error."""
        ...


class BrokerUnavailable(SagazError):
    """The broker connection failed during a publish; the claims were given back (no attempt
    counted). The relay loop retries with backoff; ``relay_once`` callers decide themselves."""


_MAX_RETRY_DELAY = 10.0


def _tell(
    listeners: list[Callable[[Sequence[OutboxEvent]], None]], events: Sequence[OutboxEvent]
) -> None:
    for listener in listeners:
        try:
            listener(events)
        except Exception:
            logger.exception("outbox listener %r failed", listener,
                             extra={"action": "outbox_listener_failed"})


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
