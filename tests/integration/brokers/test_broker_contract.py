"""Every broker against the real service: envelopes survive the trip, failed handlers get the
event again, each consumer name gets every event, connection loss loses nothing."""

from __future__ import annotations

from broker_contract import (
    BrokerKit,
    check_connection_loss,
    check_redelivery,
    check_round_trip,
    check_two_consumers,
)


async def test_round_trip_keeps_the_envelope(kit: BrokerKit) -> None:
    await check_round_trip(kit)


async def test_failed_handler_gets_the_event_again(kit: BrokerKit) -> None:
    await check_redelivery(kit)


async def test_every_consumer_name_gets_every_event(kit: BrokerKit) -> None:
    await check_two_consumers(kit)


async def test_connection_loss_loses_nothing(networked_kit: BrokerKit) -> None:
    await check_connection_loss(networked_kit)
