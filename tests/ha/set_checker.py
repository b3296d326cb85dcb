"""A set checker in the manner of Jepsen's set workload: it compares what the clients of a
:class:`~steady_load.SteadyLoad` were told with what the final primary holds.

- acknowledged: run() returned (COMPLETED);
- found: acknowledged sagas present on the primary, COMPLETED, with their three steps;
- lost: acknowledged sagas missing there, or not COMPLETED (the client was lied to);
- duplicated: (saga, step) whose action ran more than once, in the load or in recovery;
- duplicated events: an outbox event or audit-log entry of a saga stored twice (a commit sent
  again after its outcome was lost must not add its rows again);
- client errors: calls that raised; in flight: sagas of such calls that the primary holds;
- unfinished: sagas on the primary still not final (after recovery there must be none);
- write gap: the longest time without a completed saga (from a second before the fault on);
  rto: from the fault to the acknowledgement that ended that gap (writes served again); 0 when
  that gap is under OUTAGE seconds: a stall that short is no outage (on a loaded machine a
  steady load stalls for a second now and then).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

import psycopg
from steady_load import STEPS, LoadReport

from sagaz import SagaStatus


@dataclass
class SetResult:
    scenario: str
    offered: int
    """Calls started."""
    acknowledged: int
    found: int
    lost: list[str]
    duplicated: list[tuple[str, str]]
    duplicated_events: list[tuple[str, str]]
    """(saga id, event) stored more than once in the outbox or the audit log."""
    client_errors: int
    in_flight: int
    """Sagas whose call raised but which the primary holds (they started before the fault)."""
    unfinished: list[str]
    gap: float
    rto: float | None
    error_kinds: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return (not self.lost and not self.duplicated and not self.duplicated_events
                and not self.unfinished)

    def line(self) -> str:
        rto = "-" if self.rto is None else f"{self.rto:.2f} s"
        return (f"[{self.scenario}] write gap {self.gap:.2f} s, rto {rto}, acknowledged "
                f"{self.acknowledged}, found {self.found}, lost {len(self.lost)}, duplicated "
                f"{len(self.duplicated)}, duplicated events {len(self.duplicated_events)}, "
                f"client errors {self.client_errors}, in flight "
                f"{self.in_flight}, unfinished {len(self.unfinished)}")

    def as_dict(self) -> dict[str, Any]:
        return {"scenario": self.scenario, "gap": round(self.gap, 3),
                "rto": None if self.rto is None else round(self.rto, 3),
                "offered": self.offered, "acknowledged": self.acknowledged,
                "found": self.found, "lost": len(self.lost),
                "duplicated": len(self.duplicated),
                "duplicated_events": len(self.duplicated_events),
                "client_errors": self.client_errors,
                "in_flight": self.in_flight, "unfinished": len(self.unfinished)}


def longest_gap(report: LoadReport, start: float, end: float) -> tuple[float, float]:
    """The longest interval in [start, end] (perf_counter) without an acknowledged saga."""
    times = sorted(t for t in report.completion_times if start <= t <= end)
    return max(itertools.pairwise([start, *times, end]), key=lambda ab: ab[1] - ab[0])


def write_gap(report: LoadReport, start: float, end: float) -> float:
    a, b = longest_gap(report, start, end)
    return b - a


OUTAGE = 2.0


def recovery_time(report: LoadReport, fault: float, start: float, end: float) -> float | None:
    """From ``fault`` to the acknowledgement that ended the longest gap in [start, end]; None
    when no saga was acknowledged after the fault at all."""
    if not [t for t in report.completion_times if fault <= t <= end]:
        return None
    began, resumed = longest_gap(report, start, end)
    return 0.0 if resumed - began < OUTAGE else max(0.0, resumed - fault)


def check(scenario: str, report: LoadReport, primary: str, *, fault: float,
          end: float | None = None) -> SetResult:
    """Read the final primary (``primary``: a conninfo straight to it) and judge the history."""
    told = {op.saga_id: op.status for op in report.history if op.status is not None}
    failed = [op.saga_id for op in report.history if op.status is None]
    every = [op.saga_id for op in report.history]
    with psycopg.connect(primary, autocommit=True, connect_timeout=5) as conn:
        held = dict(conn.execute(
            "SELECT saga_id::text, status FROM saga_executions WHERE saga_id = ANY(%s::uuid[])",
            (every,)).fetchall())
        steps = dict(conn.execute(
            "SELECT saga_id::text, count(*) FROM saga_steps WHERE saga_id = ANY(%s::uuid[]) "
            "AND status = 'COMPLETED' GROUP BY saga_id", (list(told),)).fetchall())
        twice = conn.execute(
            "SELECT saga_id::text, event_type FROM saga_outbox WHERE saga_id = ANY(%s::uuid[]) "
            "GROUP BY saga_id, event_type HAVING count(*) > 1 "
            "UNION ALL "
            "SELECT saga_id::text, event FROM saga_audit_log WHERE saga_id = ANY(%s::uuid[]) "
            "GROUP BY saga_id, event, details HAVING count(*) > 1", (every, every)).fetchall()
    found = [sid for sid, status in told.items()
             if held.get(sid) == status.value
             and (status is not SagaStatus.COMPLETED or steps.get(sid) == len(STEPS))]
    lost = sorted(set(told) - set(found))
    unfinished = sorted(sid for sid, status in held.items() if not SagaStatus(status).is_final)
    duplicated = sorted(key for key, n in report.steps.actions.items() if n > 1)
    kinds: dict[str, int] = {}
    for op in report.history:
        if op.error is not None:
            kind = op.error.split(":", 1)[0]
            kinds[kind] = kinds.get(kind, 0) + 1
    window = max(fault - 1.0, min((op.invoked for op in report.history), default=fault))
    last = end if end is not None else max(
        (op.returned for op in report.history if op.returned is not None), default=fault)
    return SetResult(
        scenario=scenario, offered=len(report.history), acknowledged=len(told),
        found=len(found), lost=lost,
        duplicated=duplicated, duplicated_events=sorted((str(a), str(b)) for a, b in twice),
        client_errors=len(failed),
        in_flight=len([sid for sid in failed if sid in held]), unfinished=unfinished,
        gap=write_gap(report, window, last), rto=recovery_time(report, fault, window, last),
        error_kinds=kinds)
