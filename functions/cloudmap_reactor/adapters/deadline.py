"""Deadlines for AWS calls (placeholder until the retry layer lands: context only, no botocore hooks)."""

from __future__ import annotations

import contextvars
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future
from contextlib import contextmanager
from typing import Any, TypeVar

from cloudmap_reactor.core.ports import AwsCallFailed

T = TypeVar("T")
_DEADLINE: contextvars.ContextVar[float | None] = contextvars.ContextVar("aws_deadline", default=None)
clock: Callable[[], float] = time.monotonic


class DeadlineExceeded(AwsCallFailed):
    """An AWS call would have run past the deadline of the work it belongs to."""


@contextmanager
def aws_deadline(at: float) -> Iterator[None]:
    current = _DEADLINE.get()
    token = _DEADLINE.set(at if current is None else min(at, current))
    try:
        yield
    finally:
        _DEADLINE.reset(token)


def remaining_seconds() -> float | None:
    at = _DEADLINE.get()
    return None if at is None else at - clock()


def submit_in_context(executor: Executor, fn: Callable[..., T], *args: Any) -> Future[T]:
    context = contextvars.copy_context()
    return executor.submit(context.run, fn, *args)
