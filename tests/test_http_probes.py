"""Active HTTP health checks against real HTTP servers on 127.0.0.1 registered as Cloud Map instances.

Each test seeds ECS and Cloud Map in the emulator, points each task's instance at a local
server that behaves one way, runs poller passes and then reads Cloud Map's state.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import pytest

from cloudmap_reactor import wiring
from cloudmap_reactor.adapters.clients import cloudmap_client
from cloudmap_reactor.adapters.http_probe import RequestsProber
from cloudmap_reactor.core.http_checks import HttpChecks
from cloudmap_reactor.core.probing import ProbeResult, ProbeTarget, ProbeVerdict, parse_status_codes
from cloudmap_reactor.handlers import health_poller
from cloudmap_reactor.poller.scanner import HealthPassResult, HealthScanner
from devtools.aws_emulator import FleetBuilder, SeededService
from devtools.http_targets import Behaviour, LocalHttpTargets, TargetServer, local_http_targets
from devtools.local_lambda import FakeLambdaContext
from tests.conftest import FakeTime, count_calls, load_event, task_ids

CONNECT_TIMEOUT = 0.2
READ_TIMEOUT = 0.3
PASS_BOUND = 2 * (CONNECT_TIMEOUT + READ_TIMEOUT) + 0.25  # RequestsProber.pass_bound_seconds
CHECK = {"cloudmap-reactor:http-check": "/healthz"}
DEFAULT_CODES = parse_status_codes("200-399")


@pytest.fixture
def http() -> Iterator[LocalHttpTargets]:
    with local_http_targets() as targets:
        yield targets


@pytest.fixture
def probing(env: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """The poller as deployed in the tasks' VPC, with short timeouts so that tests stay quick.

    Without the ledger: these tests are about probing and the failure threshold on their own (no
    readiness, removals one-way); tests/test_quarantine.py runs probes with the ledger.
    """
    env.delenv("LEDGER_TABLE")
    env.setenv("HTTP_PROBES", "true")
    env.setenv("PROBE_CONNECT_TIMEOUT_SECONDS", str(CONNECT_TIMEOUT))
    env.setenv("PROBE_READ_TIMEOUT_SECONDS", str(READ_TIMEOUT))
    env.setenv("RECONCILE_EVERY_PASSES", "0")
    return env


@dataclass
class Passes:
    """A scanner as one poller invocation builds it, so passes can be run one at a time."""

    scanner: HealthScanner

    def run_pass(self) -> HealthPassResult:
        return self.scanner.run_pass(deadline=time.monotonic() + 60)


def scanner() -> Passes:
    return Passes(wiring.poller_deps().new_scanner(owner="test"))


@pytest.fixture(autouse=True)
def prod(aws: FleetBuilder) -> str:
    return aws.create_cluster("prod")


def service_behind(
    aws: FleetBuilder,
    http: LocalHttpTargets,
    behaviours: list[Behaviour],
    *,
    name: str = "orders",
    tags: dict[str, str] | None = None,
) -> tuple[SeededService, list[TargetServer]]:
    """A Service Connect service in ``prod`` with one task per behaviour, each registered at its own server."""
    service = aws.create_service("prod", name, discovery_names=[name], tags=CHECK if tags is None else tags)
    servers = [http.add(b) for b in behaviours]
    aws.start_tasks(service, len(servers), addresses=[s.address for s in servers])
    return service, servers


def test_only_the_instance_that_fails_the_threshold_is_deregistered(
    aws: FleetBuilder, http: LocalHttpTargets, probing: pytest.MonkeyPatch
) -> None:
    """500s, a timeout and a refused connection leave after 3 failures in a row; flapping stays."""
    ok = Behaviour.HEALTHY
    behaviours = [ok, ok, ok, ok, Behaviour.FLAPPING, Behaviour.FAILING, Behaviour.SLOW]
    service, servers = service_behind(aws, http, behaviours)
    refused = aws.start_tasks(service, 1, addresses=[http.refused_address()])[0]
    sid = service.cloudmap_service_ids[0]
    healthy_and_flapping = service.task_arns[:5]
    failing, slow = service.task_arns[5:7]
    scan = scanner()

    for _ in range(2):
        scan.run_pass()
        assert aws.instance_ids(sid) == task_ids(*service.task_arns)  # 2 failures: not yet
    third = scan.run_pass()
    fourth = scan.run_pass()

    assert aws.instance_ids(sid) == task_ids(*healthy_and_flapping)
    removed = {(d.task_arn, d.reason.value, d.outcome.value) for d in third.deregistrations}
    assert removed == {(arn, "ProbeFailed", "deregistered") for arn in (failing, slow, refused)}
    assert fourth.deregistrations == []
    errors = {p.result.target.instance_id: p.result.error for p in third.failed_probes}
    assert errors == {
        **ids_to(service.task_arns[4], "status 500"),  # flapping: 500, 200, 500, 200
        **ids_to(failing, "status 500"),
        **ids_to(slow, "timeout"),
        **ids_to(refused, "connection failed: connection refused"),
    }
    # Every server was asked over GET for the tagged path, with a User-Agent that says who asks.
    flapping = servers[4]
    assert [r.path for r in flapping.requests] == ["/healthz"] * 4
    assert {r.method for r in flapping.requests} == {"GET"}
    assert all(r.headers["User-Agent"].startswith("cloudmap-reactor-health-check/") for r in flapping.requests)
    assert len(servers[5].requests) == 3  # not probed once it left Cloud Map


def ids_to(task_arn: str, error: str) -> dict[str, str]:
    return {task_arn.rsplit("/", 1)[-1]: error}


def test_one_success_resets_the_count(aws: FleetBuilder, http: LocalHttpTargets, probing: pytest.MonkeyPatch) -> None:
    service, servers = service_behind(aws, http, [Behaviour.HEALTHY] * 3 + [Behaviour.FAILING])
    sick = servers[3]
    scan = scanner()
    scan.run_pass()
    scan.run_pass()
    sick.behaviour = Behaviour.HEALTHY  # recovers for one probe
    scan.run_pass()
    sick.behaviour = Behaviour.FAILING
    for _ in range(2):
        scan.run_pass()

    assert aws.instance_ids(service.cloudmap_service_ids[0]) == task_ids(*service.task_arns)
    assert scan.run_pass().deregistrations[0].task_arn == service.task_arns[3]  # the third failure in a row


def test_fail_open_holds_when_every_instance_fails(
    aws: FleetBuilder, http: LocalHttpTargets, probing: pytest.MonkeyPatch
) -> None:
    """A shared dependency is down and every /healthz says 500: removing them all would be an outage."""
    service, _ = service_behind(aws, http, [Behaviour.FAILING] * 4)
    scan = scanner()

    results = [scan.run_pass() for _ in range(4)]

    assert aws.instance_ids(service.cloudmap_service_ids[0]) == task_ids(*service.task_arns)
    assert [len(r.fail_open) for r in results] == [0, 0, 1, 1]
    assert (results[2].fail_open[0].failing, results[2].fail_open[0].healthy_registered) == (4, 0)
    assert all(r.deregistrations == [] for r in results)


def test_fail_open_counts_ecs_health_and_probes_together(
    aws: FleetBuilder, http: LocalHttpTargets, probing: pytest.MonkeyPatch
) -> None:
    """One task UNHEALTHY in ECS, two failing probes, of four: removing three would leave 25 %."""
    service, _ = service_behind(aws, http, [Behaviour.HEALTHY] * 2 + [Behaviour.FAILING] * 2)
    aws.set_health(service.task_arns[0], "UNHEALTHY")
    scan = scanner()

    first = scan.run_pass()
    results = [scan.run_pass() for _ in range(2)]

    assert [d.task_arn for d in first.deregistrations] == [service.task_arns[0]]  # ECS health, 75 % stay
    assert len(results[-1].fail_open) == 1
    assert aws.instance_ids(service.cloudmap_service_ids[0]) == task_ids(*service.task_arns[1:])


def test_timeouts_never_stall_a_pass_beyond_the_bound(
    aws: FleetBuilder, http: LocalHttpTargets, probing: pytest.MonkeyPatch
) -> None:
    """Servers that answer after 30 s or trickle their body: more of them than the prober has threads.

    Probes that could not start in time are skipped (their count is unchanged); started ones time out.
    """
    probing.setenv("PROBE_CONCURRENCY", "4")
    behaviours = [Behaviour.SLOW] * 8 + [Behaviour.TRICKLE] * 2 + [Behaviour.HEALTHY] * 10
    service, _ = service_behind(aws, http, behaviours)
    scan = scanner()
    prober = wiring.poller_deps().prober
    assert prober is not None
    probing_took: list[float] = []
    probe = prober.probe

    def timed_probe(targets: Sequence[ProbeTarget]) -> list[ProbeResult]:
        started = time.monotonic()
        try:
            return probe(targets)
        finally:
            probing_took.append(time.monotonic() - started)

    probing.setattr(prober, "probe", timed_probe)

    result = scan.run_pass()

    assert probing_took[0] < PASS_BOUND + 0.5  # the bound (1.25 s) and scheduling slack; not 30 s
    verdicts = {p.target.instance_id: p.verdict for p in result.probes}
    assert len(verdicts) == 20
    stuck, answering = task_ids(*service.task_arns[:10]), task_ids(*service.task_arns[10:])
    assert {verdicts[i] for i in stuck} <= {ProbeVerdict.FAILED, ProbeVerdict.SKIPPED}
    assert {verdicts[i] for i in answering} <= {ProbeVerdict.HEALTHY, ProbeVerdict.SKIPPED}
    failed = [p for p in result.probes if p.verdict is ProbeVerdict.FAILED]
    assert len(failed) >= 4
    assert {p.error for p in failed} == {"timeout"}


def poll_for_a_minute(env: pytest.MonkeyPatch, context: FakeLambdaContext) -> dict[str, Any]:
    """One poller invocation through its handler: passes every 10 s of fake time for 60 s."""
    env.setenv("POLL_WINDOW_SECONDS", "60")
    result: dict[str, Any] = health_poller.lambda_handler(load_event("scheduled-poll.json"), context)
    return result


def test_dry_run_changes_nothing(
    aws: FleetBuilder,
    http: LocalHttpTargets,
    probing: pytest.MonkeyPatch,
    lambda_context: FakeLambdaContext,
    fake_time: FakeTime,
    read_output: Any,
) -> None:
    probing.setenv("DRY_RUN", "true")
    service, _ = service_behind(aws, http, [Behaviour.HEALTHY] * 3 + [Behaviour.FAILING])
    cloudmap = count_calls(cloudmap_client())

    result = poll_for_a_minute(probing, lambda_context)

    assert result["passes"] >= 4
    assert aws.instance_ids(service.cloudmap_service_ids[0]) == task_ids(*service.task_arns)
    assert cloudmap.counts["DeregisterInstance"] == 0
    # one Cloud Map service: listed once per pass to probe it, and once more right before acting in
    # the pass that (would have) removed the failing instance, for the fail-open guard
    assert cloudmap.counts["ListInstances"] == result["passes"] + 1
    output = read_output()
    assert output.metrics.value("DryRunDeregistrations", Reason="ProbeFailed") == 1  # once, not every pass
    assert output.metrics.value("TasksDeregistered") == 0
    assert output.metrics.value("ProbeFailures") == 3  # not probed again once it would have left


def test_handler_reports_probe_metrics_and_logs(
    aws: FleetBuilder,
    http: LocalHttpTargets,
    probing: pytest.MonkeyPatch,
    lambda_context: FakeLambdaContext,
    fake_time: FakeTime,
    read_output: Any,
) -> None:
    service, _ = service_behind(aws, http, [Behaviour.HEALTHY] * 3 + [Behaviour.FAILING])

    result = poll_for_a_minute(probing, lambda_context)

    passes = result["passes"]
    assert aws.instance_ids(service.cloudmap_service_ids[0]) == task_ids(*service.task_arns[:3])
    output = read_output()
    assert output.metrics.value("TasksDeregistered", Reason="ProbeFailed") == 1
    assert output.metrics.value("ProbeFailures") == 3
    durations = [r for r in output.metrics.records if "ProbeDuration" in r]
    assert sum(len(r["ProbeDuration"]) if isinstance(r["ProbeDuration"], list) else 1 for r in durations) == (
        3 * passes + 3
    )
    assert output.metrics.dimension_sets("ProbeDuration") == [{"service"}] * len(durations)
    failures = [r for r in output.logs if r["message"] == "HTTP probe failed"]
    assert [r["consecutive_failures"] for r in failures] == [1, 2, 3]
    assert failures[0]["error"] == "status 500"
    assert failures[0]["status"] == 500


def test_probing_is_off_without_a_vpc_and_says_so_once(
    aws: FleetBuilder,
    http: LocalHttpTargets,
    env: pytest.MonkeyPatch,
    lambda_context: FakeLambdaContext,
    read_output: Any,
) -> None:
    env.setenv("POLL_WINDOW_SECONDS", "0")
    env.setenv("RECONCILE_EVERY_PASSES", "0")
    service, servers = service_behind(aws, http, [Behaviour.FAILING] * 2 + [Behaviour.HEALTHY] * 4)
    cloudmap = count_calls(cloudmap_client())

    for _ in range(4):
        health_poller.lambda_handler(load_event("scheduled-poll.json"), lambda_context)

    assert all(not s.requests for s in servers)
    assert aws.instance_ids(service.cloudmap_service_ids[0]) == task_ids(*service.task_arns)
    assert cloudmap.counts["ListInstances"] == 4  # where a pass finds its task ids (one page each), not probes
    assert sum("HTTP probes are off" in m for m in read_output().messages("INFO")) == 1


def test_only_registered_instances_of_opted_in_in_scope_services_are_contacted(
    aws: FleetBuilder, http: LocalHttpTargets, probing: pytest.MonkeyPatch, read_output: Any
) -> None:
    """Untagged and ignored services, stopping tasks and link-local addresses are never probed."""
    service, servers = service_behind(aws, http, [Behaviour.HEALTHY] * 3)
    untagged, untagged_servers = service_behind(aws, http, [Behaviour.FAILING], name="search", tags={})
    ignored, ignored_servers = service_behind(
        aws, http, [Behaviour.FAILING], name="legacy", tags={**CHECK, "cloudmap-reactor:ignore": "true"}
    )
    aws.begin_stopping(service.task_arns[2])
    metadata = aws.start_tasks(service, 1, addresses=[("169.254.169.254", 80)])[0]
    scan = scanner()

    results = [scan.run_pass() for _ in range(4)]

    assert [len(s.requests) for s in servers] == [4, 4, 0]
    assert not untagged_servers[0].requests
    assert not ignored_servers[0].requests
    assert aws.instance_ids(untagged.cloudmap_service_ids[0]) == task_ids(*untagged.task_arns)
    assert aws.instance_ids(ignored.cloudmap_service_ids[0]) == task_ids(*ignored.task_arns)
    problems = [p for r in results for p in r.probe_problems]
    metadata_id = task_ids(metadata).pop()
    assert [(p.instance_id, p.kind) for p in problems] == [(metadata_id, "invalid_target")]
    assert problems[0].error.startswith(
        f"instance {metadata_id} has address 169.254.169.254 in AWS_INSTANCE_IPV4, which is never probed: link-local"
    )
    assert task_ids(metadata) <= aws.instance_ids(service.cloudmap_service_ids[0])  # unprobed is not unhealthy


def test_redirects_are_not_followed_and_the_codes_tag_decides(
    aws: FleetBuilder, http: LocalHttpTargets, probing: pytest.MonkeyPatch
) -> None:
    """A 302 is healthy by default (200-399) without its Location being fetched; ``-codes`` narrows that."""
    probing.setenv("SERVICE_REFRESH_PASSES", "1")  # ``strict``, created later, is seen by the next pass
    elsewhere = http.add(Behaviour.HEALTHY)
    location = "http://{}:{}/".format(*elsewhere.address)
    service, _ = service_behind(aws, http, [Behaviour.HEALTHY] * 3)
    redirecting = http.add(Behaviour.REDIRECT, location=location)
    no_content = http.add(Behaviour.STATUS, status=204)
    aws.start_tasks(service, 2, addresses=[redirecting.address, no_content.address])
    scan = scanner()

    assert {p.verdict for p in scan.run_pass().probes} == {ProbeVerdict.HEALTHY}
    assert not elsewhere.requests

    strict, _ = service_behind(
        aws, http, [Behaviour.HEALTHY] * 3, name="strict", tags={**CHECK, "cloudmap-reactor:http-check-codes": "200"}
    )
    aws.start_tasks(strict, 1, addresses=[http.add(Behaviour.STATUS, status=204).address])
    scan = scanner()
    for _ in range(3):
        scan.run_pass()

    assert aws.instance_ids(strict.cloudmap_service_ids[0]) == task_ids(*strict.task_arns[:3])
    assert aws.instance_ids(service.cloudmap_service_ids[0]) == task_ids(*service.task_arns)


def test_a_port_in_the_tag_is_probed_instead_of_the_registered_port(
    aws: FleetBuilder, http: LocalHttpTargets, probing: pytest.MonkeyPatch
) -> None:
    """``8081/ready``: an admin port beside the traffic port (all tasks share 127.0.0.1 here)."""
    admin = http.add(Behaviour.HEALTHY)
    service = aws.create_service(
        "prod", "orders", discovery_names=["orders"], tags={"cloudmap-reactor:http-check": f"{admin.address[1]}/ready"}
    )
    aws.start_tasks(service, 3, addresses=[http.refused_address() for _ in range(3)])
    scan = scanner()

    for _ in range(3):
        scan.run_pass()

    assert [r.path for r in admin.requests] == ["/ready"] * 9
    assert aws.instance_ids(service.cloudmap_service_ids[0]) == task_ids(*service.task_arns)


def test_a_wrong_tag_is_reported_once_and_nothing_is_probed(
    aws: FleetBuilder, http: LocalHttpTargets, probing: pytest.MonkeyPatch
) -> None:
    service, servers = service_behind(
        aws, http, [Behaviour.FAILING] * 3, tags={"cloudmap-reactor:http-check": "healthz"}
    )
    scan = scanner()

    results = [scan.run_pass() for _ in range(4)]

    assert [len(r.probe_problems) for r in results] == [1, 0, 0, 0]
    assert "must be a path (/healthz)" in results[0].probe_problems[0].error
    assert all(not s.requests for s in servers)
    assert aws.instance_ids(service.cloudmap_service_ids[0]) == task_ids(*service.task_arns)


def test_an_instance_failing_in_one_of_two_cloudmap_services_leaves_only_that_one(
    aws: FleetBuilder, http: LocalHttpTargets, probing: pytest.MonkeyPatch
) -> None:
    """Two discovery names, each with its own port: a task whose gRPC port fails stays reachable over HTTP."""
    service = aws.create_service("prod", "orders", discovery_names=["orders", "orders-grpc"], tags=CHECK)
    http_sid, grpc_sid = service.cloudmap_service_ids
    healthy = [http.add(Behaviour.HEALTHY) for _ in range(4)]
    arns = aws.start_tasks(service, 4, register_in=[http_sid], addresses=[s.address for s in healthy])
    grpc = [http.add(Behaviour.HEALTHY) for _ in range(3)] + [http.add(Behaviour.FAILING)]
    for arn, server in zip(arns, grpc, strict=True):
        aws.register_task_instance(grpc_sid, service, arn, address=server.address)
    scan = scanner()

    for _ in range(3):
        scan.run_pass()

    assert aws.instance_ids(http_sid) == task_ids(*arns)
    assert aws.instance_ids(grpc_sid) == task_ids(*arns[:3])


class FirstFewProber:
    """A prober with room for ``capacity`` probes a pass (the rest skipped), and one instance that fails."""

    def __init__(self, capacity: int, failing: str) -> None:
        self.capacity = capacity
        self.failing = failing
        self.probed: list[list[str]] = []

    def probe(self, targets: Sequence[ProbeTarget]) -> list[ProbeResult]:
        self.probed.append([t.instance_id for t in targets[: self.capacity]])
        return [
            ProbeResult(
                t,
                ProbeVerdict.SKIPPED
                if i >= self.capacity
                else ProbeVerdict.FAILED
                if t.instance_id == self.failing
                else ProbeVerdict.HEALTHY,
            )
            for i, t in enumerate(targets)
        ]


def test_when_a_pass_cannot_probe_everything_failing_instances_go_first_and_none_starves(
    aws: FleetBuilder, http: LocalHttpTargets, probing: pytest.MonkeyPatch
) -> None:
    """Room for 4 probes a pass among 12 instances: the failing one is probed on every pass once it
    failed, so it leaves after exactly 3 passes in a row, and every instance is probed within 4 passes
    (4 + 3 + 3 + 4 slots, one of them held by the failing instance on 2 passes)."""
    service, _ = service_behind(aws, http, [Behaviour.HEALTHY] * 12)
    failing = task_ids(service.task_arns[7]).pop()
    deps = wiring.poller_deps()
    prober = FirstFewProber(capacity=4, failing=failing)
    checks = HttpChecks(prober, allow_loopback=True)
    scan = Passes(HealthScanner(reader=deps.reader, policy=deps.policy, actor=deps.actor, http=checks))

    results = [scan.run_pass() for _ in range(5)]

    assert set().union(*map(set, prober.probed[:4])) == task_ids(*service.task_arns)
    first_failure = next(n for n, probed in enumerate(prober.probed) if failing in probed)
    assert all(failing in probed for probed in prober.probed[first_failure : first_failure + 3])
    removed_on = [n for n, r in enumerate(results) if r.deregistrations]
    assert removed_on == [first_failure + 2]
    assert aws.instance_ids(service.cloudmap_service_ids[0]) == task_ids(*service.task_arns) - {failing}


def test_a_body_still_trickling_in_after_the_timeout_ends_the_probe_itself(http: LocalHttpTargets) -> None:
    """The probe gives up at connect + read timeout (0.5 s), not only the pass at its bound (1.25 s)."""
    trickle = http.add(Behaviour.TRICKLE)  # 1 byte every 0.1 s: no single read ever times out
    prober = RequestsProber(connect_timeout=CONNECT_TIMEOUT, read_timeout=READ_TIMEOUT)
    target = ProbeTarget("srv-a", "task-1", "http://{}:{}/healthz".format(*trickle.address), DEFAULT_CODES)

    (result,) = prober.probe([target])

    assert (result.verdict, result.error, result.status) == (ProbeVerdict.FAILED, "timeout", None)
    assert result.duration_ms < (PASS_BOUND - 0.15) * 1000
    prober.close()


def test_an_instance_that_cannot_be_probed_is_counted_once_and_left_registered(
    aws: FleetBuilder,
    http: LocalHttpTargets,
    probing: pytest.MonkeyPatch,
    lambda_context: FakeLambdaContext,
    fake_time: FakeTime,
    read_output: Any,
) -> None:
    service, _ = service_behind(aws, http, [Behaviour.HEALTHY] * 2)
    metadata = aws.start_tasks(service, 1, addresses=[("169.254.169.254", 80)])[0]

    result = poll_for_a_minute(probing, lambda_context)

    assert result["passes"] >= 3
    output = read_output()
    assert output.metrics.value("InvalidProbeTargets") == 1  # once per instance per invocation, not per pass
    assert task_ids(metadata) <= aws.instance_ids(service.cloudmap_service_ids[0])
    problem = next(r for r in output.logs if r["message"].startswith("Cannot probe"))
    assert (problem["instance_id"], problem["kind"]) == (task_ids(metadata).pop(), "invalid_target")
