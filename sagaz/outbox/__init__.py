"""Event publishing. The transactional outbox relay and the consumer inbox build on this package."""
