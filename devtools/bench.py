"""`make bench`: what a health pass costs at fleet scale, measured against the local emulator.

The bench process holds the emulator: a moto server on 127.0.0.1 seeded with three clusters
(1k, 5k and 10k tasks, 20 tasks per Service Connect service). Everything measured runs in a
separate worker process (``python -m devtools.bench worker …``) that reaches the emulator through
``AWS_ENDPOINT_URL``, as the Lambda function would reach AWS, so the worker's peak RSS is the
poller's own. Each AWS call of the worker waits an injected latency (default 30 ms) before it is
sent, standing in for the network and AWS's own processing.

The emulator's own CPU time is taken out of the picture: moto's generic response serializer
needs about 0.2 s per 100 described tasks, which AWS does not, so the bench answers
``DescribeTasks`` and ``ListTasks`` from the same moto data through a direct JSON encoder
(``fast_ecs_responses``). Call counts are counted in the worker, per operation, by botocore hooks.

Results: ``docs/benchmarks.md`` (tables) and ``docs/benchmarks.png`` (pass time and calls vs
fleet size). Benchmarks measure; the tests assert call counts, which are deterministic.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import boto3
from moto import mock_aws
from moto.ecs.responses import EC2ContainerServiceResponse
from moto.server import ThreadedMotoServer
from moto.servicediscovery.models import servicediscovery_backends

from devtools.aws_emulator import FleetBuilder, aws_like_ecs
from devtools.bench_report import (
    DEFAULT_BUDGET,
    POLL_INTERVAL,
    TASKS_PER_SERVICE,
    UNHEALTHY_PER_CLUSTER,
    plot,
    render,
)
from devtools.local_lambda import emulator_environment

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
REGION = "us-east-1"
FLEETS = (1_000, 5_000, 10_000)


def worker_env(endpoint: str, extra: dict[str, str]) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "POWERTOOLS_", "CLUSTER_", "POLL_", "ECS_"))
    }
    env.update(
        {
            **emulator_environment(endpoint),
            "POWERTOOLS_METRICS_NAMESPACE": "CloudMapReactorBench",
            "LOG_LEVEL": "WARNING",
            "PYTHONPATH": f"{ROOT / 'functions'}{os.pathsep}{ROOT}",
            **extra,
        }
    )
    return env


@contextmanager
def fast_ecs_responses() -> Iterator[None]:
    """Answer ListTasks/DescribeTasks from moto's data with a direct JSON encoder (see module doc)."""
    arn_lists: dict[tuple[str, str], list[str]] = {}

    def list_tasks(self: Any) -> str:
        cluster = self.ecs_backend._get_cluster(self._get_param("cluster", "default"))
        desired = self._get_param("desiredStatus") or "RUNNING"
        tasks = self.ecs_backend.tasks.get(cluster.name, {})
        key = (cluster.name, desired)
        if key not in arn_lists or len(arn_lists[key]) > len(tasks):
            arn_lists[key] = [arn for arn, t in tasks.items() if t.desired_status == desired]
        arns = arn_lists[key]
        start = int(self._get_param("nextToken") or 0)
        size = int(self._get_param("maxResults") or 100)
        body: dict[str, Any] = {"taskArns": arns[start : start + size]}
        if start + size < len(arns):
            body["nextToken"] = str(start + size)
        return json.dumps(body)

    def describe_tasks(self: Any) -> str:
        tasks = self.ecs_backend.describe_tasks(self._get_param("cluster", "default"), self._get_param("tasks", []))
        return json.dumps({"tasks": [_task_json(t) for t in tasks], "failures": []})

    with ExitStack() as patches:
        patches.enter_context(mock.patch.object(EC2ContainerServiceResponse, "list_tasks", list_tasks))
        patches.enter_context(mock.patch.object(EC2ContainerServiceResponse, "describe_tasks", describe_tasks))
        yield


def _task_json(task: Any) -> dict[str, Any]:
    """The fields of a DescribeTasks task that a Fargate task has, as AWS serializes them."""
    started = getattr(task, "started_at", None)
    return {
        "taskArn": task.task_arn,
        "clusterArn": task.cluster_arn,
        "taskDefinitionArn": task.task_definition_arn,
        "group": task.group,
        "startedBy": task.started_by,
        "lastStatus": task.last_status,
        "desiredStatus": task.desired_status,
        "healthStatus": task.health_status,
        "launchType": "FARGATE",
        "cpu": "256",
        "memory": "512",
        "availabilityZone": "us-east-1a",
        "connectivity": "CONNECTED",
        "createdAt": started.timestamp() if started else time.time(),
        "startedAt": started.timestamp() if started else time.time(),
        "version": 3,
        "containers": [
            {
                "containerArn": f"{task.task_arn}/app",
                "taskArn": task.task_arn,
                "name": "app",
                "lastStatus": task.last_status,
                "healthStatus": task.health_status,
                "networkInterfaces": [{"attachmentId": "eni-attach", "privateIpv4Address": "10.0.0.10"}],
            }
        ],
        "attachments": [],
        "tags": [],
    }


@dataclass
class Fleet:
    cluster_arn: str
    tasks: int
    services: list[Any]


def seed(builder: Any, size: int) -> Fleet:
    """One cluster of ``size`` tasks: ``size / 20`` Service Connect services, each with its Cloud Map service."""
    name = f"bench-{size // 1000}k"
    cluster_arn = builder.create_cluster(name)
    cloudmap = servicediscovery_backends[builder.account_id][REGION]
    services = []
    for index in range(size // TASKS_PER_SERVICE):
        service = builder.create_service(name, f"svc-{index:04d}", discovery_names=[f"svc-{index:04d}-{name}"])
        builder.start_tasks(service, TASKS_PER_SERVICE, register_in=[])
        for arn in service.task_arns:  # what Service Connect does, straight into the emulator
            builder.set_health(arn, "HEALTHY")
            cloudmap.register_instance(
                service.cloudmap_service_ids[0], arn.rsplit("/", 1)[-1], arn, {"AWS_INSTANCE_IPV4": "10.0.0.10"}
            )
        services.append(service)
    for service in random.Random(size).sample(  # noqa: S311 - a reproducible choice, not a secret
        services, UNHEALTHY_PER_CLUSTER
    ):
        builder.set_health(service.task_arns[0], "UNHEALTHY")
    return Fleet(cluster_arn=cluster_arn, tasks=size, services=services)


def run_worker(mode: str, endpoint: str, env: dict[str, str], *args: str, python: str | None = None) -> Any:
    command = [python or sys.executable, "-m", "devtools.bench_worker", mode, *args]
    done = subprocess.run(
        command, env=worker_env(endpoint, env), cwd=ROOT, capture_output=True, text=True, check=False, timeout=600
    )
    if done.returncode != 0:
        raise RuntimeError(f"worker {mode} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def import_times(python: str, repeats: int = 9) -> dict[str, dict[str, float]]:
    """Wall time of a cold ``import`` in a fresh interpreter, per module: min and median, in ms.

    Rounds interleave the modules, so a busy moment of the machine hits all of them alike; the
    minimum is the least disturbed measurement and the one the ratios use.
    """
    modules = {
        "boto3": "boto3",
        "reactor handler": "cloudmap_reactor.handlers.task_state_change",
        "poller handler": "cloudmap_reactor.handlers.health_poller",
    }
    # LAMBDA_TASK_ROOT as in Lambda: the X-Ray SDK then samples locally instead of creating an
    # X-Ray API client at import (which it does outside Lambda, and which Lambda never pays).
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT / "functions"),
        "POWERTOOLS_METRICS_NAMESPACE": "Bench",
        "LAMBDA_TASK_ROOT": str(ROOT / "functions"),
        "AWS_LAMBDA_FUNCTION_NAME": "cloudmap-reactor-bench",
    }
    code = "import time, importlib, sys; t = time.perf_counter(); importlib.import_module(sys.argv[1]); "
    code += "print((time.perf_counter() - t) * 1000)"
    results: dict[str, list[float]] = {name: [] for name in modules}
    for round_ in range(repeats + 1):
        for name, module in modules.items():
            done = subprocess.run(
                [python, "-c", code, module], env=env, capture_output=True, text=True, check=True, timeout=120
            )
            if round_:  # the first round only warms the bytecode caches
                results[name].append(float(done.stdout))
    return {name: {"min": min(times), "median": statistics.median(times)} for name, times in results.items()}


@dataclass
class Detection:
    fleet_tasks: int
    flipped_after_seconds: float
    latency_seconds: float | None


def measure_and_report(args: argparse.Namespace) -> int:
    latency = args.latency_ms / 1000
    port = _free_port()
    endpoint = f"http://127.0.0.1:{port}"
    with mock_aws(), aws_like_ecs(), fast_ecs_responses():
        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        server.start()
        try:
            builder = FleetBuilder(
                boto3.client("ecs", region_name=REGION), boto3.client("servicediscovery", region_name=REGION)
            )
            print("Seeding the emulator …", flush=True)
            started = time.perf_counter()
            fleets = [seed(builder, size) for size in args.fleets]
            print(f"  {sum(f.tasks for f in fleets)} tasks in {time.perf_counter() - started:.0f} s", flush=True)

            scans = {}
            for fleet in fleets:
                print(f"Passes over {fleet.tasks} tasks …", flush=True)
                scans[fleet.tasks] = {
                    "unlimited": _passes(endpoint, fleet, latency, budget="0", passes=3),
                    "budget": _passes(endpoint, fleet, latency, budget=DEFAULT_BUDGET, passes=2),
                }
            print("Reactor warm path …", flush=True)
            reactor = _reactor(endpoint, fleets[0], latency)
            print("Detection latency inside one invocation …", flush=True)
            smallest_and_largest = {fleet.tasks: fleet for fleet in (fleets[0], fleets[-1])}.values()
            detections = [_detection(endpoint, fleet, builder, latency) for fleet in smallest_and_largest]
        finally:
            server.stop()
    print("Cold imports …", flush=True)
    imports = import_times(args.runtime_python)

    report = render(args, scans, reactor, detections, imports)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "benchmarks.md").write_text(report)
    plot(scans, args.out / "benchmarks.png", args.latency_ms)
    print(report)
    return 0


def _passes(endpoint: str, fleet: Fleet, latency: float, *, budget: str, passes: int) -> dict[str, Any]:
    env = {"CLUSTER_ARNS": fleet.cluster_arn, "ECS_READS_PER_SECOND": budget, "SERVICE_REFRESH_PASSES": "1000"}
    result: dict[str, Any] = run_worker("pass", endpoint, env, "--latency", str(latency), "--passes", str(passes))
    return result


def _reactor(endpoint: str, fleet: Fleet, latency: float) -> dict[str, Any]:
    service = fleet.services[-1]
    tasks = service.task_arns[1:9]
    env = {"CLUSTER_ARNS": "", "SERVICE_CACHE_TTL_SECONDS": "30"}
    args = ["--latency", str(latency), "--cluster", fleet.cluster_arn, "--service", service.name, "--tasks", *tasks]
    result: dict[str, Any] = run_worker("reactor", endpoint, env, *args)
    result["discovery_names"] = len(service.cloudmap_service_ids)
    return result


def _detection(endpoint: str, fleet: Fleet, builder: FleetBuilder, latency: float) -> Detection:
    """Start one real poller invocation, turn a task UNHEALTHY mid-way, time until Cloud Map drops it."""
    service = fleet.services[len(fleet.services) // 2]
    victim = service.task_arns[-1]
    env = {
        "CLUSTER_ARNS": fleet.cluster_arn,
        "ECS_READS_PER_SECOND": "0",
        "POLL_INTERVAL_SECONDS": str(POLL_INTERVAL),
        "POLL_WINDOW_SECONDS": "30",
    }
    command = [sys.executable, "-m", "devtools.bench_worker", "poll", "--latency", str(latency), "--timeout", "60"]
    worker = subprocess.Popen(
        command,
        env=worker_env(endpoint, env),
        cwd=Path(__file__).resolve().parent.parent,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(6.3)  # the worker has imported and run its first pass; flip between passes
    flipped = time.monotonic()
    builder.set_health(victim, "UNHEALTHY")
    gone_after: float | None = None
    task_id = victim.rsplit("/", 1)[-1]
    while time.monotonic() - flipped < 40 and worker.poll() is None:
        if task_id not in builder.instance_ids(service.cloudmap_service_ids[0]):
            gone_after = time.monotonic() - flipped
            break
        time.sleep(0.05)
    worker.communicate(timeout=120)
    builder.set_health(victim, "HEALTHY")
    return Detection(fleet_tasks=fleet.tasks, flipped_after_seconds=6.3, latency_seconds=gone_after)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--latency-ms", type=float, default=30.0, help="injected latency per AWS call")
    parser.add_argument(
        "--runtime-python", default=sys.executable, help="interpreter with only the runtime deps (cold imports)"
    )
    parser.add_argument("--out", type=Path, default=DOCS, help="where benchmarks.md and benchmarks.png go")
    parser.add_argument(
        "--fleets",
        type=lambda text: tuple(int(n) for n in text.split(",")),
        default=FLEETS,
        help="fleet sizes in tasks, comma-separated (default: 1000,5000,10000)",
    )
    return measure_and_report(parser.parse_args(argv))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


if __name__ == "__main__":
    sys.exit(main())
