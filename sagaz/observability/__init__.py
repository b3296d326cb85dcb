"""Observability: Prometheus metrics (:mod:`sagaz.observability.metrics`), collected on scrape
where they live in a database (:mod:`sagaz.observability.scrape`, :mod:`.ha_metrics`) and served
over HTTP with health probes (:mod:`sagaz.observability.server`). Everything hangs off the
listeners and hooks of the engine, the storages, the relay and the inbox."""
