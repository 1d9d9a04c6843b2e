"""Sub-minute polling inside one invocation, the window it polls for, and the ECS read budget."""

from __future__ import annotations

import pytest

from cloudmap_reactor.adapters.rate_limit import TokenBucket
from cloudmap_reactor.config import schedule_period_seconds
from cloudmap_reactor.core.poll_loop import SAFETY_MARGIN_SECONDS, PollLoop, poll_window_seconds


class Clock:
    """Fake time where passes take ``durations`` seconds each (cycled) and sleeps advance it."""

    def __init__(self, durations: list[float]) -> None:
        self.now = 0.0
        self.durations = durations
        self.starts: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds > 0
        self.now += seconds

    def run_pass(self) -> None:
        self.starts.append(self.now)
        self.now += self.durations[(len(self.starts) - 1) % len(self.durations)]


def test_passes_start_every_interval_without_drift() -> None:
    time = Clock([1.5])
    passes = PollLoop(interval=10, window=50, clock=time.clock, sleep=time.sleep).run(time.run_pass)
    assert time.starts == [0, 10, 20, 30, 40]
    assert passes == 5


def test_a_slow_pass_shortens_the_next_sleep_and_a_pass_over_the_interval_is_followed_at_once() -> None:
    time = Clock([2, 7, 13, 1])
    PollLoop(interval=10, window=50, clock=time.clock, sleep=time.sleep).run(time.run_pass)
    assert time.starts == [0, 10, 20, 33]


def test_no_pass_is_started_that_would_end_after_the_window() -> None:
    time = Clock([4])
    PollLoop(interval=10, window=35, clock=time.clock, sleep=time.sleep).run(time.run_pass)
    assert time.starts == [0, 10, 20, 30]
    assert time.starts[-1] + 4 <= 35


def test_window_zero_means_exactly_one_pass() -> None:
    time = Clock([0.5])
    assert PollLoop(interval=10, window=0, clock=time.clock, sleep=time.sleep).run(time.run_pass) == 1


def test_detection_latency_is_at_most_one_interval_plus_a_pass() -> None:
    """A task that turns UNHEALTHY at any moment is seen by the next pass to start."""
    time = Clock([1.8])
    PollLoop(interval=10, window=50, clock=time.clock, sleep=time.sleep).run(time.run_pass)
    for turned_unhealthy in [0.1, 3.0, 9.9, 25.0, 38.2]:
        seen = next(start for start in time.starts if start >= turned_unhealthy)
        assert seen + 1.8 - turned_unhealthy <= 10 + 2


@pytest.mark.parametrize(
    ("configured", "period", "remaining", "expected"),
    [
        (None, 60, 90, 60),  # until the next tick of rate(1 minute): no gap (the lease serialises)
        (None, 60, 60, 55),  # the deployed case: 60 s timeout, 5 s kept free
        (None, 300, 90, 85),  # bounded by the function's time left
        (None, None, 90, 0),  # cron(...) schedule: one pass
        (0, 60, 90, 0),
        (30, 60, 90, 30),
        (120, 60, 60, 55),
        (None, 60, 5, 0),
    ],
)
def test_window(configured: float | None, period: float | None, remaining: float, expected: float) -> None:
    assert poll_window_seconds(configured, period, remaining) == expected
    assert poll_window_seconds(configured, period, remaining) <= max(0, remaining - SAFETY_MARGIN_SECONDS)


def test_schedule_period() -> None:
    assert schedule_period_seconds("rate(1 minute)") == 60
    assert schedule_period_seconds("rate(5 minutes)") == 300
    assert schedule_period_seconds("rate(2 hours)") == 7200
    assert schedule_period_seconds("cron(0/5 * * * ? *)") is None


class BucketTime:
    def __init__(self) -> None:
        self.now = 0.0

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_budget_allows_a_second_of_burst_then_the_rate() -> None:
    time = BucketTime()
    bucket = TokenBucket(10, clock=time.clock, sleep=time.sleep)
    for _ in range(10):
        bucket.acquire()
    assert time.now == 0
    for _ in range(20):
        bucket.acquire()
    assert time.now == pytest.approx(2.0)
    assert bucket.calls == 30


def test_budget_halves_after_throttling() -> None:
    time = BucketTime()
    bucket = TokenBucket(10, clock=time.clock, sleep=time.sleep)
    for _ in range(10):
        bucket.acquire()
    bucket.penalize()
    for _ in range(10):
        bucket.acquire()
    assert time.now == pytest.approx(2.0)


def test_zero_budget_never_waits() -> None:
    time = BucketTime()
    bucket = TokenBucket(0, clock=time.clock, sleep=time.sleep)
    for _ in range(1000):
        bucket.acquire()
    assert time.now == 0
