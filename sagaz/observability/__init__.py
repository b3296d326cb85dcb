"""Observability: Prometheus metrics (:mod:`sagaz.observability.metrics`), collected on scrape
where they live in a database (:mod:`sagaz.observability.scrape`, :mod:`.ha_metrics`) and served
over HTTP with health probes (:mod:`sagaz.observability.server`); OpenTelemetry spans
(:mod:`sagaz.observability.tracing`, extra ``sagaz[otel]``, imported only by whoever asks for
it); JSON logs (:mod:`sagaz.observability.logs`). Everything hangs off the listeners and hooks
of the engine, the storages, the relay and the inbox."""
