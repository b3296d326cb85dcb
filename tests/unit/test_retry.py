import pytest
from hypothesis import given
from hypothesis import strategies as st

from sagaz import RetryPolicy


def test_exponential_without_jitter() -> None:
    policy = RetryPolicy(base_delay=0.1, multiplier=2, max_delay=1, jitter=False)
    assert [policy.delay(n) for n in range(1, 6)] == [0.1, 0.2, 0.4, 0.8, 1]


def test_jitter_is_injectable_and_bounded() -> None:
    policy = RetryPolicy(base_delay=1, multiplier=2, max_delay=10)
    assert policy.delay(2, rand=lambda: 0.0) == 1.0
    assert policy.delay(2, rand=lambda: 1.0) == 2.0


@given(st.integers(min_value=1, max_value=60), st.floats(min_value=0, max_value=1))
def test_delay_never_exceeds_max(retry: int, r: float) -> None:
    policy = RetryPolicy(base_delay=0.05, max_delay=5)
    assert 0 <= policy.delay(retry, rand=lambda: r) <= 5


def test_invalid_policies_are_refused() -> None:
    with pytest.raises(ValueError, match="multiplier"):
        RetryPolicy(multiplier=0.5)
    with pytest.raises(ValueError, match="start at 1"):
        RetryPolicy().delay(0)


async def test_the_one_retry_loop_asks_the_plan_and_reports_every_failed_attempt() -> None:
    from sagaz.engine import plan
    from sagaz.engine.retry import attempt_with_retries
    from sagaz.engine.types import StepStatus

    seen: list[tuple[int, bool]] = []

    async def flaky(number: int) -> str:
        if number < 3:
            raise RuntimeError(f"attempt {number}")
        return "done"

    def verdict(number: int, exc: Exception) -> plan.RetryAfter | plan.GiveUp:
        return plan.after_failed_attempt(number, 5)

    ok = await attempt_with_retries(flaky, verdict, RetryPolicy(0, 0),
                                    lambda n, e, final: seen.append((n, final)))
    assert (ok.value, ok.attempts, ok.gave_up) == ("done", 3, None)
    assert seen == [(1, False), (2, False)]

    def no_retry(number: int, exc: Exception) -> plan.RetryAfter | plan.GiveUp:
        return plan.after_failed_attempt(number, 0)

    gave_up = await attempt_with_retries(flaky, no_retry, RetryPolicy(0, 0))
    assert gave_up.gave_up is StepStatus.FAILED and gave_up.attempts == 1
    assert str(gave_up.error) == "attempt 1"
