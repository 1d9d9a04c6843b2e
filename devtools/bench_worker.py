"""The measured side of `make bench`: runs in its own process, reaches the emulator over HTTP.

``python -m devtools.bench_worker pass|reactor|poll|schedule …`` prints one JSON line. The
environment (``AWS_ENDPOINT_URL``, ``CLUSTER_ARNS``, ``LEDGER_TABLE``, …) is set by
``devtools.bench`` before this process starts, as Lambda sets it before a cold start.
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
from cloudmap_reactor.adapters import trimmed_model
from cloudmap_reactor.adapters.clients import cloudmap_client, dynamodb_client, ecs_client
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

    def attach_all(self) -> None:
        """ECS, Cloud Map and DynamoDB (the quarantine ledger): every client the functions use."""
        for client in (ecs_client(), cloudmap_client(), dynamodb_client()):
            self.attach(client)

    def total(self, service: str) -> int:
        return sum(v for k, v in self.counts.items() if k.startswith(f"{service}:"))


def worker_pass(args: argparse.Namespace) -> dict[str, Any]:
    """First pass and steady-state passes of one cluster, through the poller's own scanner.

    ``--full-model``: the ECS client parses answers with botocore's full model, as before the
    trimmed one (nothing is cut when nothing is kept), to compare the pass's CPU.
    """
    if args.full_model:
        trimmed_model.KEPT = {}
    meter = CallMeter(args.latency, Counter())
    meter.attach_all()
    scanner = wiring.poller_deps().new_scanner(owner="bench")
    passes = []
    try:
        for _ in range(args.passes):
            meter.counts.clear()
            started, cpu = time.perf_counter(), time.process_time()
            result = scanner.run_pass(deadline=time.monotonic() + 600)
            passes.append(
                {
                    "seconds": time.perf_counter() - started,
                    "cpu_seconds": time.process_time() - cpu,  # this process: every thread of the pass
                    "ecs_calls": meter.total("ecs"),
                    "cloudmap_calls": meter.total("servicediscovery"),
                    "dynamodb_calls": meter.total("dynamodb"),
                    "calls": dict(meter.counts),
                    "tasks": result.tasks_examined,
                    "services": result.services_with_cloudmap,
                    "unhealthy": len(result.unhealthy),
                    "quarantined": len(result.quarantined),
                    "complete": result.complete,
                }
            )
    finally:
        scanner.release_lease()  # as an invocation's end does: the next worker acts at once
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
    meter.attach_all()
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
    CallMeter(args.latency, Counter()).attach_all()
    context = FakeLambdaContext(remaining_ms=int(args.timeout * 1000))
    started = time.time()
    result = health_poller.lambda_handler(json.loads((ROOT / "events" / "scheduled-poll.json").read_text()), context)
    return {"started": started, "ended": time.time(), "result": result}


def worker_schedule(args: argparse.Namespace) -> dict[str, Any]:
    """Poller invocations as the schedule starts them: one every ``--every`` s in one warm container.

    Each is the real handler with ``--timeout`` s to run (its window and interval come from the
    environment, as deployed: passes every POLL_INTERVAL_SECONDS until 10 s before the next one).
    Runs ``--invocations`` of them, or until the bench stops the process.
    """
    meter = CallMeter(args.latency, Counter())
    meter.attach_all()
    event = json.loads((ROOT / "events" / "scheduled-poll.json").read_text())
    began = time.monotonic()
    results: list[Any] = []
    for number in range(args.invocations):
        time.sleep(max(0.0, began + number * args.every - time.monotonic()))
        context = FakeLambdaContext(remaining_ms=int(args.timeout * 1000), aws_request_id=f"bench-schedule-{number}")
        try:
            results.append(health_poller.lambda_handler(event, context))
        except health_poller.HealthScanIncomplete as exc:  # Lambda records a failed invocation; the next one runs
            results.append({"incomplete": str(exc)})
    return {"invocations": results, "calls": dict(meter.counts)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("mode", choices=["pass", "reactor", "poll", "schedule"])
    parser.add_argument("--latency", type=float, default=0.03, help="seconds added before each AWS call")
    parser.add_argument("--passes", type=int, default=3)
    parser.add_argument("--full-model", action="store_true", help="pass: parse ECS answers with the full model")
    parser.add_argument("--cluster", default="")
    parser.add_argument("--service", default="")
    parser.add_argument("--tasks", nargs="*", default=[])
    parser.add_argument("--timeout", type=float, default=60.0)
    parser.add_argument("--every", type=float, default=60.0, help="schedule: seconds from one invocation to the next")
    parser.add_argument("--invocations", type=int, default=1_000, help="schedule: how many invocations at most")
    args = parser.parse_args(argv)
    modes: dict[str, Callable[[argparse.Namespace], dict[str, Any]]] = {
        "pass": worker_pass,
        "reactor": worker_reactor,
        "poll": worker_poll,
        "schedule": worker_schedule,
    }
    print(json.dumps(modes[args.mode](args)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
