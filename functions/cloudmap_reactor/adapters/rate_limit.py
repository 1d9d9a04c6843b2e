"""A client-side budget for ECS reads, so a scan never eats the account's ECS API quota.

ECS throttles per account and region with a token bucket shared by everything that calls it,
the customer's own deploys included. The poller spends at most ``rate`` calls per second (with a
burst of one second's worth), and halves that rate for a while when ECS throttles anyway.
botocore's adaptive retry mode handles the throttled call itself (it is the only retry layer);
this keeps the next ones away. A wait for a token never goes past the current AWS deadline
(``deadline.aws_deadline``): the call fails with ``DeadlineExceeded`` instead.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from cloudmap_reactor.adapters.deadline import DeadlineExceeded, ensure_time_for

_PENALTY_SECONDS = 30.0


class TokenBucket:
    """Thread-safe token bucket: ``acquire()`` blocks until a call may be made (or raises ``DeadlineExceeded``)."""

    def __init__(
        self,
        rate: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._rate = rate
        self._capacity = max(1.0, rate)
        self._tokens = self._capacity
        self._clock = clock
        self._sleep = sleep
        self._updated = clock()
        self._penalty_until = 0.0
        self._lock = threading.Lock()
        self.waited_seconds = 0.0
        self.calls = 0

    @property
    def unlimited(self) -> bool:
        return self._rate <= 0

    def acquire(self) -> None:
        if self.unlimited:
            self.calls += 1
            return
        while True:
            with self._lock:
                now = self._clock()
                rate = self._rate / 2 if now < self._penalty_until else self._rate
                self._tokens = min(self._capacity, self._tokens + (now - self._updated) * rate)
                self._updated = now
                if self._tokens >= 1 - 1e-9:  # tolerate float rounding of the refill
                    self._tokens -= 1
                    self.calls += 1
                    return
                wait = max((1 - self._tokens) / rate, 1e-3)
                ensure_time_for("ECS read budget: waiting for a token", wait)
                self.waited_seconds += wait
            self._sleep(wait)

    def penalize(self) -> None:
        """ECS throttled us anyway: spend half the budget for the next 30 seconds."""
        with self._lock:
            self._penalty_until = self._clock() + _PENALTY_SECONDS

    # botocore event hooks -------------------------------------------------------------------
    def before_send(self, event_name: str = "", **_: Any) -> None:
        """``before-send`` fires for every HTTP attempt, retries included: each spends a token."""
        try:
            self.acquire()
        except DeadlineExceeded as exc:
            raise DeadlineExceeded(f"{event_name.rsplit('.', 1)[-1]}: {exc}") from exc

    def attach(self, client: Any) -> None:
        """Meter every ECS call of ``client`` (paginated pages and retries included)."""
        client.meta.events.register("before-send.ecs", self.before_send)
        client.meta.events.register("needs-retry.ecs", self._on_needs_retry)

    def _on_needs_retry(self, response: Any = None, **_: Any) -> None:
        """Seen before botocore retries a call: a throttled answer slows the whole scan down."""
        parsed = response[1] if response else None
        if isinstance(parsed, dict) and parsed.get("Error", {}).get("Code") in THROTTLING_CODES:
            self.penalize()


THROTTLING_CODES = frozenset({"ThrottlingException", "Throttling", "TooManyRequestsException", "RequestLimitExceeded"})
