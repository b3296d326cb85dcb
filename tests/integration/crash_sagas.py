"""The 3-step sagas of the crash-recovery test, shared by the test and the child process it kills.

Every action and compensation appends one line (``action b``, ``compensate b``) to an append-only
effects file, flushed and fsynced before it returns, so the file survives the SIGKILL and tells the
test which side effects really happened. The file's path travels in the saga context, so the
recovering process writes to the same file as the process that died.

A child process pauses at one boundary named by ``SAGAZ_CRASH_PAUSE_AT``: it writes the boundary
to the marker file ``SAGAZ_CRASH_MARKER`` and blocks until it is killed. Boundaries are
``<when>-<phase>:<step>``: ``when`` is ``before`` (the function started, no effect yet), ``after``
(the effect happened, its commit did not) or ``committed`` (the commit happened, nothing after it);
``phase`` is ``action`` or ``compensation``. Without the variable (in the test process) nothing
pauses.
"""

from __future__ import annotations

import os
import time
from typing import Any

from effects_file import append_line

from sagaz import Saga, SagaContext, SagaListener

STEPS = ("a", "b", "c")
PAUSE_ENV = "SAGAZ_CRASH_PAUSE_AT"
MARKER_ENV = "SAGAZ_CRASH_MARKER"


def pause_at(boundary: str) -> None:
    """Block forever (until SIGKILL) if this process was told to pause at ``boundary``.

    Blocks the whole event loop on purpose: nothing else of the executor may run once the
    boundary is reached.
    """
    if os.environ.get(PAUSE_ENV) != boundary:
        return
    append_line(os.environ[MARKER_ENV], boundary)
    while True:
        time.sleep(60)


def _action(step: str) -> Any:
    async def run(ctx: SagaContext) -> dict[str, Any]:
        pause_at(f"before-action:{step}")
        if ctx.get("fail_step") == step:
            raise RuntimeError(f"step {step} fails on purpose")
        append_line(ctx["effects"], f"action {step}")
        pause_at(f"after-action:{step}")
        return {f"{step}_done": True}

    return run


def _compensation(step: str) -> Any:
    async def run(ctx: SagaContext) -> None:
        # Idempotent by nature: it only records that it ran.
        pause_at(f"before-compensation:{step}")
        append_line(ctx["effects"], f"compensate {step}")
        pause_at(f"after-compensation:{step}")

    return run


class PauseAfterCommit(SagaListener):
    """Pauses right after a step's completion or compensation was committed (listeners run after
    the commit and before the executor does anything else)."""

    def step_completed(self, saga_name: str, saga_id: str, step: str, duration: float) -> None:
        pause_at(f"committed-action:{step}")

    def compensation_completed(
        self, saga_name: str, saga_id: str, step: str, error: BaseException | None
    ) -> None:
        pause_at(f"committed-compensation:{step}")


def build(name: str, recovery: Any) -> Saga:
    saga = Saga(name=name, recovery=recovery)
    for step in STEPS:
        saga.add_step(step, _action(step), _compensation(step))
    return saga


SAGAS = {
    "compensate": build("crash-compensate", "compensate"),
    "resume": build("crash-resume", "resume"),
}
