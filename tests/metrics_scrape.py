"""Scraping a live metrics endpoint over HTTP, the way Prometheus does, and reading the samples
with prometheus_client's own parser of the text format."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families


@dataclass
class Scrape:
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float]
    types: dict[str, str]
    """Family name -> counter, gauge, histogram."""
    seconds: float

    def value(self, name: str, **labels: str) -> float:
        key = (name, frozenset(labels.items()))
        assert key in self.samples, f"{name}{labels} not in the scrape: {self.names()}"
        return self.samples[key]

    def get(self, name: str, **labels: str) -> float | None:
        return self.samples.get((name, frozenset(labels.items())))

    def series(self, name: str) -> dict[frozenset[tuple[str, str]], float]:
        return {labels: v for (n, labels), v in self.samples.items() if n == name}

    def names(self) -> set[str]:
        return {name for name, _ in self.samples}

    def label_values(self) -> set[str]:
        return {value for _, labels in self.samples for _, value in labels}


def scrape(base_url: str, timeout: float = 30.0) -> Scrape:
    started = time.monotonic()
    with urllib.request.urlopen(f"{base_url}/metrics", timeout=timeout) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    seconds = time.monotonic() - started
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    types: dict[str, str] = {}
    for family in text_string_to_metric_families(text):
        types[family.name] = family.type
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return Scrape(samples, types, seconds)


def probe(base_url: str, path: str) -> tuple[int, str]:
    """Status and body of /healthz or /readyz."""
    try:
        with urllib.request.urlopen(f"{base_url}{path}", timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def wait_for(check: Callable[[], bool], seconds: float = 30.0, what: str = "") -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what or check}"
        time.sleep(0.1)
