"""Message brokers events are published to."""
