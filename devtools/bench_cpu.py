"""Client-side CPU of describing tasks: what the poller's process spends per 100 described tasks.

``python -m devtools.bench_cpu`` prints one JSON line. Each measurement runs ``EcsReader`` (the
poller's own reader: request building, signing, botocore's parsing, our snapshots) on an ECS
client whose answers are recorded ``DescribeTasks`` bodies shaped like real ones
(``devtools.ecs_answers``), served by a ``before-send`` hook (botocore's documented way to answer
a request without sending it): no network, no emulator, only the client's own CPU (process time).
Two clients: the full ECS model (as before the trimmed model) and the trimmed one (as now), plus
``json.loads`` of the same bodies (what no client can avoid). The same for ``DescribeServices``
(10 services a call, each with the 100 events ECS keeps).
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import boto3

from cloudmap_reactor.adapters.ecs import EcsReader
from cloudmap_reactor.adapters.trimmed_model import trimmed_session
from devtools import ecs_answers


def cpu_ms(action: Callable[[], Any], repeats: int) -> float:
    """Process CPU time of one ``action``, in ms: the best of 5 rounds of ``repeats`` (least disturbed)."""
    action()  # warm: the first call loads the model and creates the parser
    rounds = []
    for _ in range(5):
        gc.collect()
        started = time.process_time()
        for _ in range(repeats):
            action()
        rounds.append((time.process_time() - started) / repeats * 1000)
    return min(rounds)


def measure(repeats: int = 40) -> dict[str, Any]:
    tasks_body = ecs_answers.describe_tasks_body(7)
    services_body = ecs_answers.describe_services_body(0)
    bodies = {"DescribeTasks": tasks_body, "DescribeServices": services_body}
    arns = [ecs_answers.task_arn(7, n) for n in range(100)]
    names = [f"svc-{n:04d}" for n in range(10)]
    results: dict[str, Any] = {"task_body_bytes": len(tasks_body), "service_body_bytes": len(services_body)}
    for label, session in (("full", boto3.session.Session()), ("trimmed", trimmed_session())):
        reader = EcsReader(ecs_answers.canned_client(session, bodies))
        results[label] = {
            "describe_100_tasks_ms": cpu_ms(partial(reader.describe_tasks, ecs_answers.CLUSTER_ARN, arns), repeats),
            "describe_10_services_ms": cpu_ms(
                partial(reader.describe_services, ecs_answers.CLUSTER_ARN, names), repeats
            ),
        }
    results["json_loads"] = {
        "describe_100_tasks_ms": cpu_ms(lambda: json.loads(tasks_body), repeats),
        "describe_10_services_ms": cpu_ms(lambda: json.loads(services_body), repeats),
    }
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=40)
    print(json.dumps(measure(parser.parse_args(argv).repeats)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
