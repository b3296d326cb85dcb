"""The dashboards of the benchmark report: each dashboard's panels drawn to a PNG from the same
PromQL that Grafana runs, evaluated by a real Prometheus that scraped the benchmark while it ran.

:class:`TemporaryPrometheus` starts the machine's Prometheus on a free loopback port with a
generated configuration (scraping every second or two: a benchmark stage lasts seconds, not
hours), in a temporary directory removed afterwards; :func:`collect_dashboards` runs each
panel's queries with ``query_range`` over the window of the run, :func:`render_dashboards`
draws them.
"""

from __future__ import annotations

import json
import math
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from sagaz.ha.addresses import kernel_chosen_port
from sagaz.monitoring.scrape import ScrapeJob, prometheus_config

__all__ = [
    "DashboardData", "Series", "TemporaryPrometheus", "collect_dashboards", "query_range",
    "render_dashboards",
]


class _Query(Protocol):
    @property
    def expr(self) -> str: ...
    @property
    def legend(self) -> str: ...


class _Panel(Protocol):
    @property
    def title(self) -> str: ...
    @property
    def unit(self) -> str: ...
    @property
    def queries(self) -> Sequence[_Query]: ...


class _Dashboard(Protocol):
    @property
    def uid(self) -> str: ...
    @property
    def title(self) -> str: ...
    @property
    def panels(self) -> Sequence[_Panel]: ...


class TemporaryPrometheus:
    """Prometheus on 127.0.0.1:<free port> scraping ``jobs`` every ``interval`` seconds, with
    the configuration the deployments use (:func:`sagaz.monitoring.scrape.prometheus_config`);
    a context manager that stops it (by pid) and removes its data."""

    def __init__(self, jobs: Sequence[ScrapeJob], *, interval: float = 1.0,
                 binary: str = "prometheus"):
        found = shutil.which(binary)
        if found is None:
            raise FileNotFoundError(
                "the report's dashboards need Prometheus: apt-get install prometheus")
        self.binary = found
        self.jobs = list(jobs)
        self.interval = interval
        self.port = kernel_chosen_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._directory: Path | None = None
        self._process: subprocess.Popen[bytes] | None = None

    def config(self) -> str:
        return prometheus_config(self.jobs, self_address=f"127.0.0.1:{self.port}",
                                 rule_files=[],
                                 scrape_interval=f"{max(1, round(self.interval * 1000))}ms")

    def __enter__(self) -> TemporaryPrometheus:
        self._directory = Path(tempfile.mkdtemp(prefix="sagaz-bench-prometheus-"))
        config = self._directory / "prometheus.yml"
        config.write_text(self.config())
        log = (self._directory / "prometheus.log").open("wb")
        self._process = subprocess.Popen(
            [self.binary, f"--config.file={config}",
             f"--storage.tsdb.path={self._directory / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()
        try:
            self._wait_ready(30.0)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _wait_ready(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            assert self._process is not None
            if self._process.poll() is not None:
                raise RuntimeError(f"Prometheus exited at start: {self._log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as answer:
                    if answer.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"Prometheus was not ready within {seconds:g} s: {self._log_tail()}")

    def _log_tail(self) -> str:
        assert self._directory is not None
        path = self._directory / "prometheus.log"
        return " | ".join(path.read_text(errors="replace").splitlines()[-5:]) if path.exists() \
            else ""

    def __exit__(self, *exc: object) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)
            try:
                self._process.wait(15)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(5)
        self._process = None
        if self._directory is not None:
            shutil.rmtree(self._directory, ignore_errors=True)
            self._directory = None

    def wait_for_scrapes(self, job: str, seconds: float = 10.0) -> None:
        """Until every target of ``job`` was scraped successfully once."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            found = _api(self.url, "query", {"query": f'up{{job="{job}"}}'})
            if found and all(float(s["value"][1]) == 1 for s in found):
                return
            time.sleep(self.interval / 2)
        raise RuntimeError(f"Prometheus did not scrape job {job!r} within {seconds:g} s")


@dataclass(frozen=True)
class Series:
    labels: dict[str, str]
    points: list[tuple[float, float]]


def _api(url: str, endpoint: str, params: dict[str, str]) -> list[dict[str, Any]]:
    query = urllib.parse.urlencode(params)
    try:
        with urllib.request.urlopen(f"{url}/api/v1/{endpoint}?{query}", timeout=10) as answer:
            body = json.load(answer)
    except urllib.error.HTTPError as exc:  # a query it cannot parse or run: 400 / 422, JSON
        try:
            body = json.load(exc)
        except ValueError:
            raise RuntimeError(f"Prometheus answered {exc.code} to {params.get('query')!r}"
                               ) from exc
    if body.get("status") != "success":
        raise RuntimeError(f"Prometheus refused {params.get('query')!r}: {body.get('error')}")
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def query_range(url: str, expr: str, start: float, end: float, step: float) -> list[Series]:
    """``expr`` evaluated every ``step`` seconds from ``start`` to ``end`` (unix times)."""
    found = _api(url, "query_range", {"query": expr, "start": f"{start:.3f}",
                                      "end": f"{end:.3f}", "step": f"{step:g}"})
    return [Series(dict(s["metric"]), [(float(t), float(v)) for t, v in s["values"]
                                       if not math.isnan(float(v))]) for s in found]


def _legend(template: str, labels: dict[str, str], expr: str) -> str:
    if not template:
        return ", ".join(f"{k}={v}" for k, v in sorted(labels.items()) if k != "__name__") \
            or expr[:40]
    text = template
    for key, value in labels.items():
        text = text.replace("{{" + key + "}}", value)
    return text


@dataclass(frozen=True)
class PanelData:
    title: str
    unit: str
    queries: list[str]
    lines: list[tuple[str, list[tuple[float, float]]]]
    """(legend, points with times relative to the window's start)."""


@dataclass(frozen=True)
class DashboardData:
    uid: str
    title: str
    panels: list[PanelData]
    seconds: float
    step: float


def collect_dashboards(
    url: str, dashboards: Sequence[_Dashboard], start: float, end: float,
) -> list[DashboardData]:
    """Every panel query of ``dashboards`` over [start, end], while Prometheus still runs."""
    step = max(1.0, (end - start) / 120)
    found = []
    for dashboard in dashboards:
        panels = []
        for panel in dashboard.panels:
            lines = [(_legend(query.legend, series.labels, query.expr),
                      [(t - start, v) for t, v in series.points])
                     for query in panel.queries
                     for series in query_range(url, query.expr, start, end, step)
                     if series.points]
            panels.append(PanelData(panel.title, panel.unit, [q.expr for q in panel.queries],
                                    lines))
        found.append(DashboardData(dashboard.uid, dashboard.title, panels, end - start, step))
    return found


def render_dashboards(dashboards: Sequence[DashboardData], out: Path) -> list[str]:
    """One PNG per dashboard (a grid of its panels); returns the report's markdown lines: each
    dashboard's image, and the panels that had no data with their queries."""
    from sagaz.benchmarks.report_md import pyplot

    plt = pyplot()
    lines: list[str] = []
    for dashboard in dashboards:
        columns = 2
        rows = math.ceil(len(dashboard.panels) / columns)
        fig, axes = plt.subplots(rows, columns, figsize=(12, 2.8 * rows), squeeze=False)
        for index, panel in enumerate(dashboard.panels):
            ax = axes[index // columns][index % columns]
            for legend, points in panel.lines:
                ax.plot([t for t, _ in points], [v for _, v in points], label=legend)
            ax.set_title(panel.title, fontsize=9)
            ax.set_xlabel(f"s into the window ({panel.unit})", fontsize=7)
            ax.tick_params(labelsize=7)
            if panel.lines:
                ax.legend(fontsize=6, loc="upper left")
            else:
                ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
        for index in range(len(dashboard.panels), rows * columns):
            axes[index // columns][index % columns].axis("off")
        fig.suptitle(dashboard.title)
        fig.tight_layout()
        name = f"dashboard-{dashboard.uid}.png"
        fig.savefig(out / name, dpi=90)
        plt.close(fig)
        lines += [f"### {dashboard.title}", "", f"![{dashboard.title}]({name})", ""]
        empty = [p for p in dashboard.panels if not p.lines]
        if empty:
            lines += ["No data in this run: " + "; ".join(
                f"{p.title} (`{'`, `'.join(p.queries)}`)" for p in empty) + ".", ""]
    return lines
