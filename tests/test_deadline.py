"""AWS deadlines (``adapters/deadline.py``): calls, back-offs and budget waits end by the deadline.

Everything runs on virtual time (``tests/virtual_time.py``).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from cloudmap_reactor.adapters.deadline import (
    DeadlineExceeded,
    aws_deadline,
    ensure_time_for,
    remaining_seconds,
    submit_in_context,
)
from cloudmap_reactor.adapters.rate_limit import TokenBucket
from devtools.aws_emulator import FleetBuilder
from tests import virtual_time
from tests.virtual_time import VirtualTime


@pytest.fixture
def clock(aws: FleetBuilder, mocker: Any) -> VirtualTime:
    """Virtual time. After ``aws``: the emulator patches below are undone before the emulator's own."""
    return virtual_time.install(mocker)


# -- the context ------------------------------------------------------------------------------
def test_no_deadline_outside_a_context_and_the_earlier_one_wins_when_nested(clock: VirtualTime) -> None:
    assert remaining_seconds() is None
    with aws_deadline(clock.now + 10):
        assert remaining_seconds() == 10
        with aws_deadline(clock.now + 20):
            assert remaining_seconds() == 10
        with aws_deadline(clock.now + 3):
            assert remaining_seconds() == 3
        clock.advance(4)
        assert remaining_seconds() == 6
        with pytest.raises(DeadlineExceeded, match=r"needs 7\.00 s"):
            ensure_time_for("waiting", 7)
        ensure_time_for("waiting", 5)
    assert remaining_seconds() is None
    ensure_time_for("waiting", 1e9)


def test_deadline_crosses_into_executor_threads_only_with_submit_in_context(clock: VirtualTime) -> None:
    with ThreadPoolExecutor(max_workers=1) as executor, aws_deadline(clock.now + 10):
        assert submit_in_context(executor, remaining_seconds).result() == 10
        assert executor.submit(remaining_seconds).result() is None


def test_read_budget_does_not_wait_past_the_deadline(clock: VirtualTime) -> None:
    bucket = TokenBucket(1, clock=clock.clock, sleep=clock.sleep)
    bucket.acquire()  # the burst
    with aws_deadline(clock.now + 0.5), pytest.raises(DeadlineExceeded, match="ECS read budget"):
        bucket.acquire()  # the next token is 1 s away
    assert clock.slept == []
    with aws_deadline(clock.now + 2):
        bucket.acquire()
    assert clock.slept == [pytest.approx(1.0)]
    bucket.acquire()  # no deadline: waits as long as it takes
    assert bucket.calls == 3
