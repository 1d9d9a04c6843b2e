"""One virtual clock for everything that waits on an AWS call, so that no test waits in real time.

``install(mocker)`` puts these on it, for the duration of a test:

* the AWS deadline clock (``cloudmap_reactor.adapters.deadline.clock``);
* botocore's back-off sleep between attempts (``time.sleep`` in ``botocore.endpoint``: only that
  module's reference is replaced, ``time.sleep`` elsewhere stays real);
* botocore's adaptive-mode token bucket: its clock (``bucket.Clock``) and its wait for capacity
  (a ``threading.Condition.wait`` in ``bucket.TokenBucket``), which otherwise waits seconds of
  real time once a client has been throttled.

Clients must be created after ``install`` (``wiring.reset()`` and the ``aws`` fixture see to that).
"""

from __future__ import annotations

import threading
import time
import types
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import ReadTimeoutError
from botocore.retries import bucket


@dataclass
class VirtualTime:
    now: float = 1000.0
    slept: list[float] = field(default_factory=list)
    bucket_waits: list[float] = field(default_factory=list)

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += max(0.0, seconds)

    def advance(self, seconds: float) -> None:
        self.now += seconds


def install(mocker: Any) -> VirtualTime:
    virtual = VirtualTime()

    class VirtualCondition(threading.Condition):
        """Waits on the virtual clock: time moves on by the timeout, at once."""

        def wait(self, timeout: float | None = None) -> bool:
            # At least a millisecond: with two threads on one bucket a zero wait could spin for ever.
            waited = max(timeout or 0.0, 0.001)
            virtual.bucket_waits.append(waited)
            virtual.advance(waited)
            return True

    mocker.patch("cloudmap_reactor.adapters.deadline.clock", virtual.clock)
    endpoint_time = types.SimpleNamespace(**{name: getattr(time, name) for name in dir(time) if name[0] != "_"})
    endpoint_time.sleep = virtual.sleep
    mocker.patch("botocore.endpoint.time", endpoint_time)
    mocker.patch.object(bucket.Clock, "current_time", side_effect=lambda: virtual.now, autospec=False)
    mocker.patch.object(bucket.Clock, "sleep", side_effect=virtual.sleep, autospec=False)
    mocker.patch(
        "botocore.retries.bucket.threading", types.SimpleNamespace(Lock=threading.Lock, Condition=VirtualCondition)
    )
    return virtual


def slow_answers(client: Any, virtual: VirtualTime, seconds: float) -> list[float]:
    """Every attempt of ``client`` takes ``seconds`` of virtual time, or times out at its read timeout.

    Registered after the deadline hooks, so it sees the read timeout they set. Returns the read
    timeout of each attempt.
    """
    timeouts: list[float] = []

    def before_send(request: Any, **_: Any) -> None:
        timeout = float(request.context.get("read_timeout") or client.meta.config.read_timeout)
        timeouts.append(timeout)
        if seconds > timeout:
            virtual.advance(timeout)
            raise ReadTimeoutError(endpoint_url=request.url)
        virtual.advance(seconds)

    client.meta.events.register_last("before-send", before_send)
    return timeouts
