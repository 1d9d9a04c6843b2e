"""Repeat health passes every interval for a window, inside one scheduled invocation.

A schedule cannot fire more often than once a minute; passes every ``interval`` seconds within
the invocation bring detection down to seconds. Pass starts are anchored to the previous start,
so a slow pass shortens the following sleep instead of pushing every later pass back, and a
pass is only started when it can finish (judged by the slowest pass so far) inside the window.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

# Kept free at the end of an invocation: for the last pass to overrun a little, and to release
# the lease and save the probe streaks. Invocations may overlap: the lease in the ledger lets
# one act at a time, and releasing it at the end lets the next one act at its next pass.
SAFETY_MARGIN_SECONDS = 5.0
# No AWS call of a pass runs closer than this to the invocation's end.
DEADLINE_MARGIN_SECONDS = 2.0


def poll_window_seconds(configured: float | None, schedule_period: float | None, remaining: float) -> float:
    """How long to keep polling. ``configured`` None: until the next schedule tick (no gap before it).

    Never past ``remaining - SAFETY_MARGIN_SECONDS`` (the invocation's time left); 0 means one pass.
    With ``rate(1 minute)`` and the poller's 60 s timeout, the window is 55 s: the next invocation
    starts about 5 s after the last pass, so detection stays within about one interval plus a pass.
    """
    if configured is None:
        configured = schedule_period or 0.0
    return max(0.0, min(configured, remaining - SAFETY_MARGIN_SECONDS))


@dataclass
class PollLoop:
    interval: float
    window: float
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep

    def run(self, run_pass: Callable[[], object]) -> int:
        """Call ``run_pass`` at ``interval`` until the window closes; return how many passes ran."""
        deadline = self.clock() + self.window
        passes, slowest = 0, 0.0
        while True:
            began = self.clock()
            run_pass()
            passes += 1
            ended = self.clock()
            slowest = max(slowest, ended - began)
            next_start = max(ended, began + self.interval)
            if next_start + slowest > deadline:
                return passes
            if next_start > ended:
                self.sleep(next_start - ended)
