"""The measured side of `make bench`: runs in its own process, reaches the emulator over HTTP.

``python -m devtools.bench_worker pass|reactor|poll …`` prints one JSON line. The environment
(``AWS_ENDPOINT_URL``, ``CLUSTER_ARNS``, …) is set by ``devtools.bench`` before this process
starts, as Lambda sets it before a cold start.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cloudmap_reactor import wiring
from cloudmap_reactor.adapters.clients import cloudmap_client, ecs_client
from cloudmap_reactor.handlers import health_poller, task_state_change
from devtools.local_lambda import FakeLambdaContext

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class CallMeter:
    """Counts API calls per service and operation and adds the injected latency to each attempt."""

    latency: float
    counts: Counter[str]

    def attach(self, client: Any) -> None:
        client.meta.events.register("before-call", self._count)
        client.meta.events.register("before-send", self._wait)

    def _count(self, model: Any, **_: Any) -> None:
        self.counts[f"{model.service_model.service_name}:{model.name}"] += 1

    def _wait(self, **_: Any) -> None:
        time.sleep(self.latency)


def worker_pass(args: argparse.Namespace) -> dict[str, Any]:
    """First pass and steady-state passes of one cluster, through the poller's own scanner."""
    meter = CallMeter(args.latency, Counter())
    meter.attach(ecs_client())
    meter.attach(cloudmap_client())
    scanner = wiring.poller_deps().new_scanner(owner="bench")
    passes = []
    for _ in range(args.passes):
        meter.counts.clear()
        started = time.perf_counter()
        result = scanner.run_pass(deadline=time.monotonic() + 600)
        passes.append(
            {
                "seconds": time.perf_counter() - started,
                "ecs_calls": sum(v for k, v in meter.counts.items() if k.startswith("ecs:")),
                "cloudmap_calls": sum(v for k, v in meter.counts.items() if k.startswith("servicediscovery:")),
                "calls": dict(meter.counts),
                "tasks": result.tasks_examined,
                "services": result.services_with_cloudmap,
                "unhealthy": len(result.unhealthy),
                "complete": result.complete,
            }
        )
    return {"passes": passes, "peak_rss_mb": peak_rss_mb()}


def peak_rss_mb() -> float:
    """This process's peak resident set size (VmHWM: unlike ru_maxrss it starts afresh at exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def worker_reactor(args: argparse.Namespace) -> dict[str, Any]:
    """Stop events for tasks of one service: the cold first event, then the warm ones."""
    meter = CallMeter(args.latency, Counter())
    meter.attach(ecs_client())
    meter.attach(cloudmap_client())
    template = json.loads((ROOT / "events" / "task-stopping.json").read_text())
    results = []
    for task_arn in args.tasks:
        event = json.loads(json.dumps(template))
        event["detail"].update(taskArn=task_arn, clusterArn=args.cluster, group=f"service:{args.service}")
        meter.counts.clear()
        started = time.perf_counter()
        outcome = task_state_change.lambda_handler(event, FakeLambdaContext())
        results.append(
            {"seconds": time.perf_counter() - started, "calls": dict(meter.counts), "outcomes": outcome["outcomes"]}
        )
    return {"events": results}


def worker_poll(args: argparse.Namespace) -> dict[str, Any]:
    """One real poller invocation (window and interval from the environment)."""
    context = FakeLambdaContext(remaining_ms=int(args.timeout * 1000))
    started = time.time()
    result = health_poller.lambda_handler(json.loads((ROOT / "events" / "scheduled-poll.json").read_text()), context)
    return {"started": started, "ended": time.time(), "result": result}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("mode", choices=["pass", "reactor", "poll"])
    parser.add_argument("--latency", type=float, default=0.03, help="seconds added before each AWS call")
    parser.add_argument("--passes", type=int, default=3)
    parser.add_argument("--cluster", default="")
    parser.add_argument("--service", default="")
    parser.add_argument("--tasks", nargs="*", default=[])
    parser.add_argument("--timeout", type=float, default=60.0)
    args = parser.parse_args(argv)
    modes: dict[str, Callable[[argparse.Namespace], dict[str, Any]]] = {
        "pass": worker_pass,
        "reactor": worker_reactor,
        "poll": worker_poll,
    }
    print(json.dumps(modes[args.mode](args)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
