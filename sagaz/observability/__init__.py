"""Observability hooks: each one hangs off the listeners the engine, the relay and consumers
already call. Tracing (``sagaz.observability.tracing``) needs the ``sagaz[otel]`` extra and is
imported only by whoever asks for it; JSON logs (``sagaz.observability.logs``) need nothing."""
