"""Deadlines for AWS calls: a handler says by when its AWS work must be over, and every call obeys.

botocore's adaptive retry mode is the one retry layer (see ``clients.py``). On its own it does
not know how long the Lambda has left: a persistently throttled call can back off for longer
than the function's timeout, and a function killed at its timeout emits no metric and no log
line saying what failed. Inside ``with aws_deadline(at):`` the hooks that ``attach_deadline``
registers on a client make each call end by ``at`` (monotonic time, this module's ``clock``)
instead, with ``DeadlineExceeded``:

* ``before-send``: an attempt is not sent with less than ``MIN_ATTEMPT_SECONDS`` left; an attempt
  that is sent gets a socket read timeout of at most the time left (botocore takes a per-request
  ``read_timeout`` from the request context). The connect timeout (3 s) is not shortened, so a
  call can end at most that long after the deadline.
* ``needs-retry``: when the back-off botocore chose would end past the deadline, botocore does
  not sleep and the call ends.
* The ECS read budget (``rate_limit.TokenBucket``) does not wait for a token past the deadline.

The deadline lives in a ``contextvars`` variable, so it follows the code that set it, not the
client; ``submit_in_context`` carries it into executor threads. With no deadline set, nothing
changes. botocore's adaptive token bucket can still wait up to 2 s (its lowest rate is 0.5
requests/s) before an attempt; the ``before-send`` check after it refuses an attempt that it
delayed past the deadline.
"""

from __future__ import annotations

import contextvars
import logging
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future
from contextlib import contextmanager
from typing import Any, TypeVar

from cloudmap_reactor.core.ports import AwsCallFailed

T = TypeVar("T")

# Monotonic seconds. Tests replace it (``mocker.patch("cloudmap_reactor.adapters.deadline.clock", …)``);
# everything here reads it through the module, so the replacement is seen everywhere.
clock: Callable[[], float] = time.monotonic

_DEADLINE: contextvars.ContextVar[float | None] = contextvars.ContextVar("cloudmap_reactor_aws_deadline", default=None)
# Where the wrapped botocore retry handler leaves the back-off it chose, for the needs-retry check.
_RETRY_DELAY_KEY = "cloudmap_reactor_retry_delay"
_WRAPPED_MARK = "_cloudmap_reactor_deadline_aware"
# An attempt is not sent with less time left than this (a shorter read timeout is pointless).
MIN_ATTEMPT_SECONDS = 0.1

_log = logging.getLogger(__name__)


class DeadlineExceeded(AwsCallFailed):
    """An AWS call, a retry back-off or a wait for the read budget would have ended past the deadline."""

    located = False  # the message already names the call's target (see ``errors.aws_call``)


def now() -> float:
    """The current time on the deadline clock (``clock``)."""
    return clock()


@contextmanager
def aws_deadline(at: float) -> Iterator[None]:
    """AWS calls made in this context (this thread, and tasks started with ``submit_in_context``) end by ``at``.

    ``at`` is a time on ``clock`` (monotonic seconds). Nested deadlines keep the earlier one.
    """
    current = _DEADLINE.get()
    token = _DEADLINE.set(at if current is None else min(current, at))
    try:
        yield
    finally:
        _DEADLINE.reset(token)


def remaining_seconds() -> float | None:
    """Seconds until the current deadline (negative once it has passed); None without a deadline."""
    at = _DEADLINE.get()
    return None if at is None else at - clock()


def ensure_time_for(what: str, seconds: float = 0.0) -> None:
    """Raise ``DeadlineExceeded`` if ``what``, taking ``seconds``, would end past the current deadline."""
    left = remaining_seconds()
    if left is not None and (left <= 0 or seconds > left):
        needs = f" needs {seconds:.2f} s but" if seconds > 0 else ""
        raise DeadlineExceeded(f"{what}:{needs} the deadline {_left(left)}")


def submit_in_context(executor: Executor, fn: Callable[..., T], *args: Any) -> Future[T]:
    """``executor.submit(fn, *args)`` run in a copy of the caller's context, so its deadline still applies."""
    context = contextvars.copy_context()
    return executor.submit(context.run, fn, *args)


def attach_deadline(client: Any) -> None:
    """Make every call of ``client`` obey the current deadline (a no-op while none is set). Idempotent."""
    events = client.meta.events
    service = client.meta.service_model.service_id.hyphenize()
    _record_retry_delays(events, service)
    # botocore registers a handler once per unique id: attaching again changes nothing.
    unique = f"cloudmap-reactor-deadline-{service}"
    # First, before the read budget or botocore's adaptive bucket would wait for an attempt that is too late;
    # last, after those waits, as the final word before the request goes out.
    events.register_first(f"before-send.{service}", _before_send, unique_id=f"{unique}-send-first")
    events.register_last("before-send", _before_send, unique_id=f"{unique}-send-last")
    # Last of all needs-retry handlers (the generic event's run after the service's): botocore's has
    # chosen its back-off (recorded by the wrapper below), and the read budget's penalty and the
    # adaptive rate limiter have seen the response.
    events.register_last("needs-retry", _needs_retry, unique_id=f"{unique}-retry")


def _record_retry_delays(events: Any, service: str) -> None:
    """Wrap botocore's retry handler so that the back-off it returns is left in the request context.

    ``needs-retry`` handlers are all called and the first non-None answer is the back-off that
    botocore then sleeps; no handler sees another's answer. So the handler botocore registered
    (unique id ``retry-config-<service>``) is replaced by a wrapper that calls it and records its
    answer. It is found in the emitter's registry of unique ids (not a public botocore API: the
    tests pin this behaviour, and without it only the ``before-send`` checks apply).
    """
    unique_id = f"retry-config-{service}"
    emitter = getattr(events, "_emitter", events)
    entry = getattr(emitter, "_unique_id_handlers", {}).get(unique_id)
    if entry is None:
        _log.warning("botocore retry handler %s not found: back-offs are not checked against deadlines", unique_id)
        return
    original = entry["handler"]
    if getattr(original, _WRAPPED_MARK, False):
        return  # already wrapped

    def needs_retry(**kwargs: Any) -> Any:
        delay = original(**kwargs)
        request_dict = kwargs.get("request_dict")
        if isinstance(request_dict, dict):
            request_dict.setdefault("context", {})[_RETRY_DELAY_KEY] = delay
        return delay

    setattr(needs_retry, _WRAPPED_MARK, True)
    events.unregister(f"needs-retry.{service}", unique_id=unique_id)
    events.register(f"needs-retry.{service}", needs_retry, unique_id=unique_id)


def _before_send(request: Any = None, event_name: str = "", **_: Any) -> None:
    left = remaining_seconds()
    if left is None:
        return
    operation = event_name.rsplit(".", 1)[-1] or "AWS call"
    attempt = _attempt(getattr(request, "context", None))
    if left < MIN_ATTEMPT_SECONDS:
        raise DeadlineExceeded(f"{operation}: attempt {attempt} not sent, the deadline {_left(left)}")
    context = getattr(request, "context", None)
    if isinstance(context, dict):
        configured = getattr(context.get("client_config"), "read_timeout", None) or left
        context["read_timeout"] = min(float(configured), left)


def _needs_retry(request_dict: Any = None, operation: Any = None, attempts: int = 0, **kwargs: Any) -> None:
    left = remaining_seconds()
    if left is None or not isinstance(request_dict, dict):
        return
    delay = request_dict.get("context", {}).pop(_RETRY_DELAY_KEY, None)
    if delay is None or delay is False:
        return  # botocore does not retry: its own answer (success or error) stands
    if float(delay) + MIN_ATTEMPT_SECONDS <= left:
        return  # the back-off ends with time left for the next attempt
    name = getattr(operation, "name", "AWS call")
    raise DeadlineExceeded(
        f"{name}: gave up after {attempts} attempt(s), a retry in {float(delay):.2f} s would end past "
        f"the deadline ({_left(left)}); last answer: {_last_answer(kwargs)}"
    )


def _attempt(context: Any) -> int:
    retries = context.get("retries", {}) if isinstance(context, dict) else {}
    return int(retries.get("attempt", 1)) if isinstance(retries, dict) else 1


def _left(left: float) -> str:
    return f"passed {abs(left):.2f} s ago" if left <= 0 else f"is {left:.2f} s away"


def _last_answer(kwargs: dict[str, Any]) -> str:
    caught = kwargs.get("caught_exception")
    if caught is not None:
        return f"{type(caught).__name__}: {caught}"
    response = kwargs.get("response")
    parsed = response[1] if isinstance(response, tuple) and len(response) > 1 else None
    error = parsed.get("Error", {}) if isinstance(parsed, dict) else {}
    if isinstance(error, dict) and error.get("Code"):
        return f"{error.get('Code')}: {error.get('Message', '')}".rstrip(": ")
    return "unknown"
