"""AWS deadlines (``adapters/deadline.py``): calls, back-offs and budget waits end by the deadline.

Everything runs on virtual time (``tests/virtual_time.py``) against the local emulator, through
botocore's real retry machinery. Where a test needs botocore's back-offs to be known, it makes
botocore choose the longest ones (no jitter): ``min(2 ** (attempt - 1), 20)`` seconds.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from botocore.retries.standard import ExponentialBackoff
from moto.core.exceptions import JsonRESTError
from moto.ecs.models import EC2ContainerServiceBackend

from cloudmap_reactor.adapters.clients import TOTAL_MAX_ATTEMPTS, ecs_client
from cloudmap_reactor.adapters.deadline import (
    DeadlineExceeded,
    attach_deadline,
    aws_deadline,
    ensure_time_for,
    remaining_seconds,
    submit_in_context,
)
from cloudmap_reactor.adapters.ecs import EcsReader
from cloudmap_reactor.adapters.rate_limit import TokenBucket
from cloudmap_reactor.core.ports import AwsCallFailed
from devtools.aws_emulator import FleetBuilder, SeededService
from tests import virtual_time
from tests.virtual_time import VirtualTime


class Throttled(JsonRESTError):
    def __init__(self) -> None:
        super().__init__("ThrottlingException", "Rate exceeded")


@pytest.fixture
def orders(aws: FleetBuilder) -> SeededService:
    aws.create_cluster("prod")
    service = aws.create_service("prod", "orders", discovery_names=["orders"])
    aws.start_tasks(service, 3)
    return service


@pytest.fixture
def longest_backoffs(mocker: Any) -> None:
    def longest(_self: Any, context: Any) -> float:
        return float(min(2 ** (context.attempt_number - 1), 20))

    mocker.patch.object(ExponentialBackoff, "delay_amount", autospec=True, side_effect=longest)


@pytest.fixture
def attempts(mocker: Any) -> list[float]:
    """DescribeTasks always throttled; the virtual time of each attempt that reached the emulator."""
    seen: list[float] = []
    from cloudmap_reactor.adapters import deadline

    def describe_tasks(_self: Any, _cluster: str, _tasks: list[str]) -> Any:
        seen.append(deadline.now())
        raise Throttled

    mocker.patch.object(EC2ContainerServiceBackend, "describe_tasks", describe_tasks)
    return seen


@pytest.fixture
def batch_attempts(mocker: Any) -> list[tuple[str, float]]:
    """DescribeTasks always throttled; (first task of the batch, virtual time) of each attempt."""
    seen: list[tuple[str, float]] = []
    from cloudmap_reactor.adapters import deadline

    def describe_tasks(_self: Any, _cluster: str, tasks: list[str]) -> Any:
        seen.append((tasks[0], deadline.now()))
        raise Throttled

    mocker.patch.object(EC2ContainerServiceBackend, "describe_tasks", describe_tasks)
    return seen


def budget(clock: VirtualTime, rate: float = 0) -> TokenBucket:
    bucket = TokenBucket(rate, clock=clock.clock, sleep=clock.sleep)
    bucket.attach(ecs_client())
    return bucket


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


# -- botocore's retries under a deadline -----------------------------------------------------
def test_persistently_throttled_describe_tasks_ends_at_the_deadline_not_after_it(
    orders: SeededService, clock: VirtualTime, longest_backoffs: None, attempts: list[float]
) -> None:
    """Back-offs of 1, 2 and 4 s fit in 10 s; the next one (8 s) would not: the call ends there.

    botocore's adaptive token bucket, throttled, also waits 1 s before the third attempt, so the
    attempts go out at 0, 1, 4 and 8 s. The refusal of the 8 s back-off with 2 s left shows that
    the deadline hook ran after botocore's retry handler had chosen it (needs-retry handlers
    cannot see each other's answers otherwise).
    """
    reads = budget(clock)
    start = clock.now
    reader = EcsReader(ecs_client())

    with aws_deadline(start + 10), pytest.raises(DeadlineExceeded) as raised:
        reader.describe_tasks(orders.cluster_arn, orders.task_arns)

    assert [t - start for t in attempts] == [0, 1, 4, 8]
    assert clock.slept == [1, 2, 4]
    assert clock.bucket_waits == [1]
    assert clock.now - start == 8
    message = str(raised.value)
    assert message.startswith(f"DescribeTasks on {orders.cluster_arn}: gave up after 4 attempt(s)")
    assert "a retry in 8.00 s would end past the deadline (is 2.00 s away)" in message
    assert "ThrottlingException" in message
    assert reads.calls == 4  # each attempt spent a token of the read budget
    assert reads._penalty_until > 0  # the budget's penalty hook saw the throttled answers, the last one too


def test_without_a_deadline_botocore_retries_as_configured(
    orders: SeededService, clock: VirtualTime, longest_backoffs: None, attempts: list[float]
) -> None:
    with pytest.raises(AwsCallFailed, match="ThrottlingException") as raised:
        EcsReader(ecs_client()).describe_tasks(orders.cluster_arn, orders.task_arns)

    assert not isinstance(raised.value, DeadlineExceeded)
    assert len(attempts) == TOTAL_MAX_ATTEMPTS
    assert clock.slept == [1, 2, 4, 8, 16]


def test_an_attempt_is_not_sent_once_the_deadline_has_passed(
    orders: SeededService, clock: VirtualTime, attempts: list[float]
) -> None:
    with aws_deadline(clock.now + 5):
        clock.advance(5)
        with pytest.raises(DeadlineExceeded, match=r"DescribeTasks on .*: attempt 1 not sent, the deadline passed"):
            EcsReader(ecs_client()).describe_tasks(orders.cluster_arn, orders.task_arns)
    assert attempts == []


def test_each_attempt_reads_for_no_longer_than_the_time_left(
    orders: SeededService, clock: VirtualTime, longest_backoffs: None, attempts: list[float]
) -> None:
    """Answers take 3 s: the read timeout (10 s configured) shrinks to the time left, then attempts stop."""
    timeouts = virtual_time.slow_answers(ecs_client(), clock, 3.0)
    start = clock.now

    with aws_deadline(start + 6.5), pytest.raises(DeadlineExceeded):
        EcsReader(ecs_client()).describe_tasks(orders.cluster_arn, orders.task_arns)

    # attempt 1 at 0 s (6.5 s left), back-off 1 s, attempt 2 at 4 s (2.5 s left: times out at 6.5 s)
    assert timeouts == [6.5, 2.5]
    assert clock.now - start == pytest.approx(6.5)


def test_attaching_twice_changes_nothing(
    orders: SeededService, clock: VirtualTime, longest_backoffs: None, attempts: list[float]
) -> None:
    attach_deadline(ecs_client())
    attach_deadline(ecs_client())
    with aws_deadline(clock.now + 10), pytest.raises(DeadlineExceeded):
        EcsReader(ecs_client()).describe_tasks(orders.cluster_arn, orders.task_arns)
    assert clock.slept == [1, 2, 4]


class GatedExecutor(ThreadPoolExecutor):
    """One worker, held busy until ``gate`` tasks have been submitted: every page is listed before any describe."""

    def __init__(self, gate: int) -> None:
        super().__init__(max_workers=1)
        self._gate, self._submitted, self._open = gate, 0, threading.Event()
        super().submit(self._open.wait)

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Any:
        future = super().submit(fn, *args, **kwargs)
        self._submitted += 1
        if self._submitted >= self._gate:
            self._open.set()
        return future


def test_describes_in_executor_threads_obey_the_callers_deadline_and_stop_at_the_first_failure(
    aws: FleetBuilder,
    orders: SeededService,
    clock: VirtualTime,
    longest_backoffs: None,
    batch_attempts: list[tuple[str, float]],
) -> None:
    """Four batches of tasks described on a worker: the first fails at the deadline, the others never start."""
    aws.start_tasks(orders, 397, register_in=[])  # 400 tasks: four ListTasks pages, four DescribeTasks batches
    with GatedExecutor(gate=4) as executor:
        reader = EcsReader(ecs_client(), executor=executor)
        with aws_deadline(clock.now + 10), pytest.raises(DeadlineExceeded, match="DescribeTasks"):
            reader.describe_running_tasks(orders.cluster_arn)

    first_batch = batch_attempts[0][0]
    # 1, 2 and 4 s back-offs, then 8 s refused
    assert len([1 for first, _ in batch_attempts if first == first_batch]) == 4
    # The worker may start the next batch before the failure cancels the ones still queued.
    assert len({first for first, _ in batch_attempts}) <= 2
