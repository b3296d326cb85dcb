"""Raw broker publish throughput through publish_batch (not part of the default suite: run
`pytest -s tests/benchmarks/test_broker_benchmark.py`).

Relay targets end to end: >= 25,000 events/s Redis, >= 10,000 NATS, >= 5,000 RabbitMQ (publisher
confirms, persistent messages); the raw broker path must be well above them. Prints the medians
of 3 runs of 20,000 events for batches of 100 and 500; asserts only the targets themselves, which
the raw path clears with room to spare even on a loaded machine.
"""

import pytest

from sagaz.benchmarks.brokers import format_report, run_broker_benchmark

TARGETS = {"redis": 25_000, "nats": 10_000, "rabbitmq": 5_000}


@pytest.mark.timeout(600)
def test_broker_publish_throughput() -> None:
    results = run_broker_benchmark()
    print("\n" + format_report(results))
    for result in results:
        if result.broker in TARGETS and result.batch_size >= 500:
            assert result.events_per_second >= TARGETS[result.broker], result
