"""`make bench`: what a health pass costs at fleet scale, measured against the local emulator.

The bench process holds the emulator: a moto server on 127.0.0.1 seeded with one cluster per
fleet (``FLEETS``: 1k, 5k and 10k tasks with every service in Cloud Map, and 50k tasks, 2,500
services, 10% of them in Cloud Map; 20 tasks per ECS service). Everything measured runs in a
separate worker process (``python -m devtools.bench_worker …``) that reaches the emulator through
``AWS_ENDPOINT_URL``, as the Lambda function would reach AWS, so the worker's peak RSS is the
poller's own. Each AWS call of the worker waits an injected latency (default 30 ms) before it is
sent, standing in for the network and AWS's own processing.

Seeding goes through the AWS APIs (clusters, services, task definitions, ``RunTask``) except for
what only AWS itself writes: task health and Service Connect's Cloud Map instances are written
straight into the emulator's backends (``seed``), so that 66,000 tasks seed in a few minutes.

The emulator's own CPU time is kept small: moto's generic response serializer needs about 0.2 s
per 100 described tasks, which AWS does not, so the bench answers ``DescribeTasks`` and
``ListTasks`` from the same moto data through a direct JSON encoder (``fast_ecs_responses``),
with task bodies shaped like real Fargate Service Connect ones (``devtools.ecs_answers``), so
that the worker parses what it would parse in AWS. Call counts are counted in the worker, per
operation, by botocore hooks; the floor they are compared with is ``bench_report.pass_floor``.

The quarantine ledger is the template's ``LedgerTable``, created in the emulator
(``devtools.ledger_table``) and given to every worker as ``LEDGER_TABLE``, as deployed: its
DynamoDB calls are counted with the others. Detection latency (sick → out of Cloud Map) and
restore latency (healthy again → registered again) are measured from outside while a worker runs
poller invocations on the production schedule at the default read budget (``_flip_latency``), on
the smallest and the largest fleet. Client-side CPU per 100 described tasks is measured apart,
without emulator or network (``devtools.bench_cpu``).

Results: ``docs/benchmarks.md`` (tables) and ``docs/benchmarks.png`` (pass time and calls vs
fleet size). Benchmarks measure; the tests assert call counts, which are deterministic.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import pickle
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

import boto3
from moto import mock_aws
from moto.ecs.models import ecs_backends
from moto.ecs.responses import EC2ContainerServiceResponse
from moto.server import ThreadedMotoServer
from moto.servicediscovery.models import servicediscovery_backends

from devtools.aws_emulator import MAX_DESCRIBE_TASKS, FleetBuilder, SeededService, aws_like_ecs
from devtools.bench_report import (
    DEFAULT_BUDGET,
    POLL_INTERVAL,
    RESTORE_SCHEDULE_SECONDS,
    TASKS_PER_SERVICE,
    UNHEALTHY_PER_CLUSTER,
    FleetSpec,
    FlipLatency,
    plot,
    render,
)
from devtools.ecs_answers import fargate_task
from devtools.http_targets import Behaviour, LocalHttpTargets, TargetServer, local_http_targets
from devtools.ledger_table import create_ledger_table
from devtools.local_lambda import emulator_environment

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
REGION = "us-east-1"
LEDGER_TABLE = "cloudmap-reactor-ledger"
# Every service in Cloud Map at 1k, 5k and 10k tasks; 50k tasks (2,500 services) with 10% of them in Cloud Map.
FLEETS = (FleetSpec(1_000), FleetSpec(5_000), FleetSpec(10_000), FleetSpec(50_000, 0.1))
FLIPS = 24  # detection (and restore) samples per kind, on the smallest and the largest fleet
RESTORE_SAMPLES = 24  # per kind (ECS health, HTTP probes), on the smallest fleet
FLIP_VICTIMS = 6  # tasks of each kind cycling between sick and healthy at once
FLIP_LIMIT_SECONDS = 90.0  # one wait longer than this (9 intervals) ends that victim's cycles
BUDGET_PASSES = 7  # at the default budget: a cold 2,500-service cluster warms up over its first 3-4 passes
LEASE_SECONDS = 31.0  # the poller's lease (3 intervals, at least 30 s), which a stopped worker leaves held


def worker_env(endpoint: str, extra: dict[str, str]) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AWS_", "POWERTOOLS_", "CLUSTER_", "POLL_", "ECS_", "LEDGER_", "PROBE_", "HTTP_"))
    }
    env.update(
        {
            **emulator_environment(endpoint),
            "POWERTOOLS_METRICS_NAMESPACE": "CloudMapReactorBench",
            "LOG_LEVEL": "WARNING",
            "LEDGER_TABLE": LEDGER_TABLE,
            "PYTHONPATH": f"{ROOT / 'functions'}{os.pathsep}{ROOT}",
            **extra,
        }
    )
    return env


@contextmanager
def fast_ecs_responses() -> Iterator[None]:
    """Answer ListTasks/DescribeTasks from moto's data with a direct JSON encoder (see module doc)."""
    # (cluster, desired status) -> (how many tasks the cluster had, the ARNs): listed again when tasks come or go
    arn_lists: dict[tuple[str, str], tuple[int, list[str]]] = {}

    def list_tasks(self: Any) -> str:
        cluster = self.ecs_backend._get_cluster(self._get_param("cluster", "default"))
        desired = self._get_param("desiredStatus") or "RUNNING"
        tasks = self.ecs_backend.tasks.get(cluster.name, {})
        key = (cluster.name, desired)
        if key not in arn_lists or arn_lists[key][0] != len(tasks):
            arn_lists[key] = (len(tasks), [arn for arn, t in tasks.items() if t.desired_status == desired])
        arns = arn_lists[key][1]
        start = int(self._get_param("nextToken") or 0)
        size = int(self._get_param("maxResults") or 100)
        body: dict[str, Any] = {"taskArns": arns[start : start + size]}
        if start + size < len(arns):
            body["nextToken"] = str(start + size)
        return json.dumps(body)

    # cluster -> (how many tasks the cluster had, task id -> task): indexed again when tasks come or go
    by_id: dict[str, tuple[int, dict[str, Any]]] = {}

    def describe_tasks(self: Any) -> str:
        cluster = self.ecs_backend._get_cluster(self._get_param("cluster", "default"))
        wanted = self._get_param("tasks", [])
        if not wanted or len(wanted) > MAX_DESCRIBE_TASKS:
            return self.ecs_backend.describe_tasks(cluster.name, wanted)  # type: ignore[no-any-return]  # its error
        tasks = self.ecs_backend.tasks.get(cluster.name, {})
        if cluster.name not in by_id or by_id[cluster.name][0] != len(tasks):
            by_id[cluster.name] = (len(tasks), {t.id: t for t in tasks.values()})
        index = by_id[cluster.name][1]
        found = [index[i] for i in (arn.rsplit("/", 1)[-1] for arn in wanted) if i in index]
        missing = [{"arn": arn, "reason": "MISSING"} for arn in wanted if arn.rsplit("/", 1)[-1] not in index]
        return json.dumps({"tasks": [_task_json(t) for t in found], "failures": missing})

    with ExitStack() as patches:
        patches.enter_context(mock.patch.object(EC2ContainerServiceResponse, "list_tasks", list_tasks))
        patches.enter_context(mock.patch.object(EC2ContainerServiceResponse, "describe_tasks", describe_tasks))
        yield


def _task_json(task: Any) -> dict[str, Any]:
    """A DescribeTasks task as AWS answers it for a Fargate Service Connect task: every member real tasks carry
    (``devtools.ecs_answers``), with this task's ARN, group, statuses, health and start time."""
    started = getattr(task, "started_at", None)
    body = fargate_task(0, 0, health=task.health_status)
    body.update(
        taskArn=task.task_arn,
        clusterArn=task.cluster_arn,
        taskDefinitionArn=task.task_definition_arn,
        group=task.group,
        startedBy=task.started_by,
        lastStatus=task.last_status,
        desiredStatus=task.desired_status,
        healthStatus=task.health_status,
        startedAt=started.timestamp() if started else time.time(),
    )
    for container in body["containers"]:
        container.update(taskArn=task.task_arn, lastStatus=task.last_status)
    return body


@dataclass
class Fleet:
    spec: FleetSpec
    cluster_arn: str
    services: list[SeededService]  # every ECS service of the cluster
    registered: list[SeededService]  # those registered in Cloud Map (Service Connect)

    @property
    def tasks(self) -> int:
        return self.spec.tasks


def seed(builder: FleetBuilder, spec: FleetSpec) -> Fleet:
    """One cluster of ``spec.tasks`` tasks, 20 a service; every ``spec.cloudmap_every``-th service is a Service
    Connect service (container health check, its own Cloud Map service, its tasks registered and HEALTHY). The
    other services' tasks run outside Cloud Map, half of them with a container health check (HEALTHY), half
    without (UNKNOWN, as ECS answers). Seeding writes tasks' health and Cloud Map instances straight into the
    emulator (what ECS and Service Connect do; no API can), so that 50,000 tasks seed in a couple of minutes.
    """
    name = spec.cluster_name
    cluster_arn = builder.create_cluster(name)
    cloudmap = servicediscovery_backends[builder.account_id][REGION]
    tasks = ecs_backends[builder.account_id][REGION].tasks
    services, registered = [], []
    for index in range(spec.services):
        in_cloudmap = index % spec.cloudmap_every == 0
        checked = in_cloudmap or index % 2 == 1
        service = builder.create_service(
            name,
            f"svc-{index:04d}",
            discovery_names=[f"svc-{index:04d}-{name}"] if in_cloudmap else [],
            health_check=checked,
        )
        builder.start_tasks(service, TASKS_PER_SERVICE, register_in=[])
        for arn in service.task_arns:
            if checked:
                tasks[name][arn].health_status = "HEALTHY"  # type: ignore[attr-defined]  # gap 2 of aws_emulator
            if in_cloudmap:  # what Service Connect does
                cloudmap.register_instance(
                    service.cloudmap_service_ids[0], arn.rsplit("/", 1)[-1], arn, {"AWS_INSTANCE_IPV4": "10.0.0.10"}
                )
        services.append(service)
        if in_cloudmap:
            registered.append(service)
    for service in _seeded_unhealthy(spec, registered):
        builder.set_health(service.task_arns[0], "UNHEALTHY")
    return Fleet(spec=spec, cluster_arn=cluster_arn, services=services, registered=registered)


def _seeded_unhealthy(spec: FleetSpec, registered: list[SeededService]) -> list[SeededService]:
    return random.Random(spec.tasks).sample(registered, UNHEALTHY_PER_CLUSTER)  # noqa: S311 - reproducible


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


def measure_and_report(args: argparse.Namespace) -> int:
    began = time.monotonic()
    timing: dict[str, float] = {}
    latency = args.latency_ms / 1000
    print("Client-side CPU per 100 described tasks …", flush=True)
    cpu = run_worker_plain([sys.executable, "-m", "devtools.bench_cpu"])
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
            create_ledger_table(boto3.client("dynamodb", region_name=REGION), LEDGER_TABLE)
            print("Seeding the emulator …", flush=True)
            started = time.monotonic()
            fleets = [seed(builder, spec) for spec in args.fleets]
            timing["seeding"] = time.monotonic() - started
            print(f"  {sum(f.tasks for f in fleets)} tasks in {timing['seeding']:.0f} s", flush=True)

            started = time.monotonic()
            scans: dict[FleetSpec, dict[str, Any]] = {}
            for fleet in fleets:
                print(f"Passes over {fleet.spec.label} tasks …", flush=True)
                scans[fleet.spec] = {
                    "unlimited": _passes(endpoint, fleet, latency, budget="0", passes=args.passes),
                    # As deployed (the refresh slices included), until a cold container's warm-up is over.
                    "budget": _passes(
                        endpoint, fleet, latency, budget=DEFAULT_BUDGET, passes=BUDGET_PASSES, refresh_passes=None
                    ),
                    "full model": _passes(endpoint, fleet, latency, budget="0", passes=2, full_model=True),
                }
                print(f"  {json.dumps(scans[fleet.spec])}", flush=True)  # kept in the log, should a later step fail
            timing["passes"] = time.monotonic() - started
            print("Reactor warm path …", flush=True)
            reactor = _reactor(endpoint, fleets[0], latency)
            started = time.monotonic()
            flips = _flips(args, endpoint, fleets, scans, builder, latency=latency)
            timing["detection and restore"] = time.monotonic() - started
        finally:
            server.stop()
    print("Cold imports …", flush=True)
    imports = import_times(args.runtime_python)
    timing["total"] = time.monotonic() - began

    measured = {"scans": scans, "reactor": reactor, "imports": imports, "flips": flips, "cpu": cpu, "timing": timing}
    (Path(tempfile.gettempdir()) / "cloudmap-reactor-bench.pickle").write_bytes(pickle.dumps(measured))  # re-render
    report = render(args, scans, reactor, imports, flips=flips, cpu=cpu, timing=timing, note=args.note)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "benchmarks.md").write_text(report)
    plot(scans, args.out / "benchmarks.png", args.latency_ms)
    print(report)
    return 0


def _flips(
    args: argparse.Namespace,
    endpoint: str,
    fleets: list[Fleet],
    scans: dict[FleetSpec, dict[str, Any]],
    builder: FleetBuilder,
    *,
    latency: float,
) -> list[FlipLatency]:
    """Detection and restore latency on the smallest fleet (with HTTP probes) and on the largest."""
    flips = []
    for index, fleet in enumerate({f.tasks: f for f in (fleets[0], fleets[-1])}.values()):
        if index:
            time.sleep(LEASE_SECONDS)  # the last worker was stopped mid-invocation: its lease expires
        smallest = fleet is fleets[0]
        samples = args.flips if not smallest else max(args.flips, args.restore_samples)
        print(f"Detection and restore latency over {fleet.spec.label} tasks ({samples} flips) …", flush=True)
        warmup = _warm_up_seconds(scans[fleet.spec]["budget"]["passes"]) + 5
        flips.append(
            _flip_latency(
                endpoint, fleet, builder, latency, samples, http=smallest, warmup=warmup, budget=args.flip_budget
            )
        )
        print(f"  detected {flips[-1].detected}, timeouts {flips[-1].timeouts}", flush=True)
    return flips


def run_worker_plain(command: list[str]) -> Any:
    """A measuring process that needs no emulator; its last line of output is JSON."""
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'functions'}{os.pathsep}{ROOT}"}
    done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, check=True, timeout=600)
    return json.loads(done.stdout.strip().splitlines()[-1])


def _warm_up_seconds(passes: list[dict[str, Any]]) -> float:
    """Until a cold container's first complete pass ends (each pass takes an interval at least)."""
    done = next((i for i, p in enumerate(passes) if p.get("complete", True)), len(passes) - 1)
    return sum(max(float(p["seconds"]), POLL_INTERVAL) for p in passes[:done]) + float(passes[done]["seconds"])


def _passes(
    endpoint: str,
    fleet: Fleet,
    latency: float,
    *,
    budget: str,
    passes: int,
    full_model: bool = False,
    refresh_passes: str | None = "1000",
) -> dict[str, Any]:
    """``passes`` passes in one worker: the first of a cold container, then steady ones.

    ``refresh_passes``: ``SERVICE_REFRESH_PASSES`` (default: services described once, no refresh
    slices, to count the floor alone); None: the policy's default, as deployed.
    """
    env = {"CLUSTER_ARNS": fleet.cluster_arn, "ECS_READS_PER_SECOND": budget}
    if refresh_passes is not None:
        env["SERVICE_REFRESH_PASSES"] = refresh_passes
    args = ["--latency", str(latency), "--passes", str(passes), *(["--full-model"] if full_model else [])]
    result: dict[str, Any] = run_worker("pass", endpoint, env, *args)
    return result


def _reactor(endpoint: str, fleet: Fleet, latency: float) -> dict[str, Any]:
    service = fleet.services[-1]
    tasks = service.task_arns[1:9]
    env = {"CLUSTER_ARNS": "", "SERVICE_CACHE_TTL_SECONDS": "30"}
    args = ["--latency", str(latency), "--cluster", fleet.cluster_arn, "--service", service.name, "--tasks", *tasks]
    result: dict[str, Any] = run_worker("reactor", endpoint, env, *args)
    result["discovery_names"] = len(service.cloudmap_service_ids)
    return result


def _flip_latency(
    endpoint: str,
    fleet: Fleet,
    builder: FleetBuilder,
    latency: float,
    samples: int,
    *,
    http: bool,
    warmup: float,
    limit: float = FLIP_LIMIT_SECONDS,
    budget: str = DEFAULT_BUDGET,
) -> FlipLatency:
    """Time from "sick" to "out of Cloud Map" and back, measured from outside, ``samples`` of each per kind.

    A worker runs poller invocations as deployed: one a minute (``RESTORE_SCHEDULE_SECONDS``) in a
    warm container, each running a pass every ``POLL_INTERVAL`` s until 10 s before the next, with
    the default ECS read budget and the ledger (and HTTP probes, with ``http``). Once its first pass
    is over (``warmup`` s), ``FLIP_VICTIMS`` tasks of each kind cycle, each on its own thread
    (``FlipCycle``): made sick at a random moment, timed until Cloud Map no longer lists them, made
    healthy again at a random moment, timed until Cloud Map lists them again (read straight from the
    emulator every 20 ms).
    """
    cluster = fleet.cluster_arn.rsplit("/", 1)[-1]
    rng = random.Random(2026)  # noqa: S311 - reproducible timing, not a secret
    # Not the services whose tasks were seeded UNHEALTHY, nor the one the reactor used (the last one).
    used = {*(s.name for s in _seeded_unhealthy(fleet.spec, fleet.registered)), fleet.services[-1].name}
    spare = [s for s in fleet.registered if s.name not in used]
    cloudmap = servicediscovery_backends[builder.account_id][REGION]
    stop = threading.Event()
    victims = min(FLIP_VICTIMS, len(spare))
    cycles = [
        FlipCycle("ECS health", cloudmap, service, service.task_arns[1], stop, rng.random(), limit, builder=builder)
        for service in rng.sample(spare, victims)
    ]
    with local_http_targets() as targets, tempfile.TemporaryFile("w+") as errors:
        if http:
            for service, arn, server in _probed_victims(builder, targets, cluster, victims):
                cycles.append(
                    FlipCycle("HTTP probes", cloudmap, service, arn, stop, rng.random(), limit, server=server)
                )
        env = {
            "CLUSTER_ARNS": fleet.cluster_arn,
            "ECS_READS_PER_SECOND": budget,
            "POLL_INTERVAL_SECONDS": f"{POLL_INTERVAL:g}",
            "HTTP_PROBES": "true" if http else "false",
            "PROBE_FAILURE_THRESHOLD": "1",  # only so that a probed victim leaves within one pass
        }
        command = [sys.executable, "-m", "devtools.bench_worker", "schedule", "--latency", str(latency)]
        command += ["--every", f"{RESTORE_SCHEDULE_SECONDS:g}", "--timeout", f"{RESTORE_SCHEDULE_SECONDS:g}"]
        worker = subprocess.Popen(
            command, env=worker_env(endpoint, env), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=errors, text=True
        )
        try:
            time.sleep(warmup)
            for cycle in cycles:
                cycle.wanted = -(-samples // victims)
                cycle.thread.start()
            while any(c.thread.is_alive() for c in cycles) and worker.poll() is None:
                time.sleep(0.2)
        finally:
            stop.set()
            for cycle in cycles:
                cycle.thread.join(timeout=30)
            worker.terminate()  # mid-invocation: the lease it holds expires by itself
            worker.wait(timeout=30)
        if worker.returncode not in (0, -15):  # reported with what was measured until then
            errors.seek(0)
            print(f"schedule worker failed:\n{errors.read()[-3000:]}", file=sys.stderr, flush=True)
    detected: dict[str, list[float]] = {}
    restored: dict[str, list[float]] = {}
    for cycle in cycles:
        detected.setdefault(cycle.kind, []).extend(cycle.detected)
        restored.setdefault(cycle.kind, []).extend(cycle.restored)
    return FlipLatency(
        spec=fleet.spec,
        victims=victims,
        detected=detected,
        restored=restored,
        attributes_changed=sum(c.attributes_changed for c in cycles),
        timeouts=sum(c.timeouts for c in cycles),
        warmup_seconds=warmup,
        budget=budget,
        limit_seconds=limit,
    )


def _probed_victims(
    builder: FleetBuilder, http: LocalHttpTargets, cluster: str, count: int
) -> list[tuple[SeededService, str, TargetServer]]:
    """``count`` services with an HTTP check, 4 tasks each behind servers on 127.0.0.1; the first task is the victim."""
    victims = []
    for index in range(count):
        name = f"probed-{index}"
        service = builder.create_service(
            cluster, name, discovery_names=[f"{name}-{cluster}"], tags={"cloudmap-reactor:http-check": "/healthz"}
        )
        servers = [http.add(Behaviour.HEALTHY) for _ in range(4)]
        arns = builder.start_tasks(service, 4, addresses=[s.address for s in servers])
        victims.append((service, arns[0], servers[0]))
    return victims


@dataclass
class FlipCycle:
    """One task, again and again: sick at a random moment → timed until out of Cloud Map → healthy at a
    random moment → timed until back.

    ``ECS health``: UNHEALTHY, then HEALTHY (it returns at the first pass that reads it). ``HTTP
    probes``: its server answers 500, then 200 (it returns after ``PROBE_HEALTHY_THRESHOLD`` = 2
    successful probes, so one pass later).
    """

    kind: str
    cloudmap: Any  # moto's Cloud Map backend: read directly, so that watching costs the emulator nothing
    service: SeededService
    task_arn: str
    stop: threading.Event
    seed: float
    limit: float  # seconds one wait may take before the cycle gives up (a timeout)
    builder: FleetBuilder | None = None  # ECS health
    server: TargetServer | None = None  # HTTP probes
    wanted: int = 0
    detected: list[float] = field(default_factory=list)
    restored: list[float] = field(default_factory=list)
    attributes_changed: int = 0
    timeouts: int = 0
    thread: threading.Thread = field(init=False)

    def __post_init__(self) -> None:
        self.thread = threading.Thread(target=self._run, name=f"flip-{self.task_arn[-8:]}", daemon=True)

    def _run(self) -> None:
        rng = random.Random(self.seed)  # noqa: S311
        original = dict(self._instance().attributes)
        try:
            while not self.stop.is_set() and len(self.restored) < self.wanted:
                if self.stop.wait(rng.uniform(0, POLL_INTERVAL)):
                    return
                self._set(healthy=False)
                flipped = time.monotonic()
                if not self._wait_until(registered=False):
                    return
                self.detected.append(time.monotonic() - flipped)
                if self.stop.wait(rng.uniform(0, POLL_INTERVAL)):
                    return
                self._set(healthy=True)
                flipped = time.monotonic()
                if not self._wait_until(registered=True):
                    return
                self.restored.append(time.monotonic() - flipped)
                self.attributes_changed += dict(self._instance().attributes) != original
        finally:
            self._set(healthy=True)

    def _set(self, *, healthy: bool) -> None:
        if self.builder is not None:
            self.builder.set_health(self.task_arn, "HEALTHY" if healthy else "UNHEALTHY")
        if self.server is not None:
            self.server.behaviour = Behaviour.HEALTHY if healthy else Behaviour.FAILING

    def _instance(self) -> Any:
        sid, instance_id = self.service.cloudmap_service_ids[0], self.task_arn.rsplit("/", 1)[-1]
        return next((i for i in list(self.cloudmap.services[sid].instances) if i.instance_id == instance_id), None)

    def _wait_until(self, *, registered: bool) -> bool:
        until = time.monotonic() + self.limit
        while (self._instance() is not None) != registered:
            if self.stop.is_set():
                return False
            if time.monotonic() > until:
                self.timeouts += 1
                return False
            time.sleep(0.02)
        return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--latency-ms", type=float, default=30.0, help="injected latency per AWS call")
    parser.add_argument(
        "--runtime-python", default=sys.executable, help="interpreter with only the runtime deps (cold imports)"
    )
    parser.add_argument("--out", type=Path, default=DOCS, help="where benchmarks.md and benchmarks.png go")
    parser.add_argument(
        "--fleets",
        type=lambda text: tuple(FleetSpec.parse(n) for n in text.split(",")),
        default=FLEETS,
        help="fleets, comma-separated: tasks, or tasks:share in Cloud Map (default: 1000,5000,10000,50000:0.1)",
    )
    parser.add_argument("--passes", type=int, default=3, help="passes per worker at unlimited budget (first + steady)")
    parser.add_argument(
        "--flips",
        type=int,
        default=FLIPS,
        help=f"detection samples per kind on the smallest and the largest fleet (default {FLIPS})",
    )
    parser.add_argument(
        "--restore-samples",
        type=int,
        default=RESTORE_SAMPLES,
        help=f"restore latency samples per kind, on the smallest fleet (default {RESTORE_SAMPLES})",
    )
    parser.add_argument(
        "--flip-budget",
        default=DEFAULT_BUDGET,
        help=f"ECS_READS_PER_SECOND of the detection and restore runs (default {DEFAULT_BUDGET}; 0: unlimited)",
    )
    parser.add_argument("--note", default="", help="a line for the report's head (say, which code was measured)")
    return measure_and_report(parser.parse_args(argv))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


if __name__ == "__main__":
    sys.exit(main())
