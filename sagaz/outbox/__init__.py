"""The transactional outbox: events written with the saga state that produced them
(``ctx.emit``), relayed to a broker by :class:`OutboxWorker`, deduplicated by consumers with
:class:`ConsumerInbox`. Broker drivers are optional extras, imported only when a URL names one."""

from sagaz.outbox.brokers import broker_from_url
from sagaz.outbox.event import OutboxEvent
from sagaz.outbox.inbox import ConsumerInbox, consume
from sagaz.outbox.worker import OutboxWorker

__all__ = ["ConsumerInbox", "OutboxEvent", "OutboxWorker", "broker_from_url", "consume"]
