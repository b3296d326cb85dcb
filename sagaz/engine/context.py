"""The context object actions and compensations receive."""

from __future__ import annotations

from typing import Any

__all__ = ["SagaContext"]


class SagaContext(dict[str, Any]):
    """A dict with the saga's data, plus who is running: ``saga_id``, ``saga_name``, ``step`` and
    ``attempt``.

    Each attempt gets its own copy: a failed attempt's changes are thrown away, a successful one's
    changes (and its returned dict) are merged into the saga's context and persisted with the
    step's completion.
    """

    __slots__ = ("attempt", "saga_id", "saga_name", "step")

    def __init__(
        self, data: dict[str, Any], saga_id: str, saga_name: str, step: str, attempt: int
    ):
        super().__init__(data)
        self.saga_id = saga_id
        self.saga_name = saga_name
        self.step = step
        self.attempt = attempt

    def changes_from(self, base: dict[str, Any]) -> dict[str, Any]:
        """Keys this copy added or rebound compared with ``base`` (identity, not equality: cheap,
        and it keeps concurrent sibling steps from overwriting each other with stale values)."""
        missing = object()
        return {k: v for k, v in self.items() if base.get(k, missing) is not v}
