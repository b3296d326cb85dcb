"""The transactional outbox: events written with the saga state that produced them, relayed to
a broker by :class:`~sagaz.outbox.worker.OutboxWorker`, deduplicated by consumers with
:class:`~sagaz.outbox.inbox.ConsumerInbox`."""

from sagaz.outbox.event import OutboxEvent

__all__ = ["OutboxEvent"]
