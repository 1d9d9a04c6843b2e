"""Traffic follows health both ways: taken out with a record in the ledger, back when healthy again.

Against the emulator (ECS, Cloud Map, and DynamoDB with the ledger table as template.yaml declares
it) and real HTTP servers on 127.0.0.1; every test asserts on Cloud Map's registrations and on
the ledger's records.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import boto3
import pytest

from cloudmap_reactor import wiring
from cloudmap_reactor.adapters.clients import dynamodb_client
from cloudmap_reactor.adapters.ledger import DynamoDbLedger
from cloudmap_reactor.core.model import Reason
from cloudmap_reactor.handlers import task_state_change
from cloudmap_reactor.poller.scanner import HealthPassResult, HealthScanner
from devtools.aws_emulator import FleetBuilder, SeededService
from devtools.http_targets import Behaviour, LocalHttpTargets, TargetServer, local_http_targets
from devtools.local_lambda import FakeLambdaContext
from tests.conftest import poll, task_event, task_ids

CHECK = {"cloudmap-reactor:http-check": "/healthz"}


@pytest.fixture
def http() -> Iterator[LocalHttpTargets]:
    with local_http_targets() as targets:
        yield targets


@pytest.fixture
def probing(env: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """The poller as deployed in the tasks' VPC, with the ledger and no reconciliation.

    The default probe timeouts: no server here hangs, and a busy CI machine must not turn a
    healthy answer into a timeout (a never-ready NotReady instead of a ProbeFailed).
    """
    for name, value in {
        "HTTP_PROBES": "true",
        "RECONCILE_EVERY_PASSES": "0",
    }.items():
        env.setenv(name, value)
    return env


class Invocation:
    """One poller invocation's scanner, so that passes can be run one at a time."""

    def __init__(self, owner: str = "invocation-1") -> None:
        self.scanner: HealthScanner = wiring.poller_deps().new_scanner(owner=owner)

    def run_pass(self) -> HealthPassResult:
        return self.scanner.run_pass(deadline=time.monotonic() + 60)

    def end(self) -> None:
        self.scanner.release_lease()
        wiring.poller_deps().save_history()


def ledger() -> DynamoDbLedger:
    return DynamoDbLedger(dynamodb_client(), wiring.policy().ledger_table)


def quarantined(aws: FleetBuilder) -> dict[tuple[str, str], Any]:
    return {r.key: r for r in ledger().quarantined()[0]}


def attributes(aws: FleetBuilder, sid: str) -> dict[str, dict[str, str]]:
    pages = aws.cloudmap.get_paginator("list_instances").paginate(ServiceId=sid)
    return {i["Id"]: i.get("Attributes", {}) for page in pages for i in page["Instances"]}


def behind(
    aws: FleetBuilder, http: LocalHttpTargets, service: SeededService, behaviours: list[Behaviour]
) -> tuple[list[str], list[TargetServer]]:
    servers = [http.add(b) for b in behaviours]
    return aws.start_tasks(service, len(servers), addresses=[s.address for s in servers]), servers


def test_a_rolling_deployment_of_slow_starters_ends_with_every_healthy_task_registered(
    aws: FleetBuilder, http: LocalHttpTargets, probing: pytest.MonkeyPatch
) -> None:
    """The outage this fixes: new tasks answer only after a while; before, they left for good."""
    aws.create_cluster("prod")
    service = aws.create_service("prod", "orders", discovery_names=["orders"], tags=CHECK)
    sid = service.cloudmap_service_ids[0]
    old, _ = behind(aws, http, service, [Behaviour.HEALTHY] * 3)
    invocation = Invocation()
    invocation.run_pass()  # the old tasks have answered: ready

    new, new_servers = behind(aws, http, service, [Behaviour.FAILING] * 3)  # still starting up
    recorded = {i: a for i, a in attributes(aws, sid).items() if i in task_ids(*new)}
    first = invocation.run_pass()
    assert {(d.task_arn, d.reason) for d in first.deregistrations} == {(arn, Reason.NOT_READY) for arn in new}
    assert aws.instance_ids(sid) == task_ids(*old)
    assert {key[1] for key in quarantined(aws)} == task_ids(*new)

    for arn in old:  # ECS stops the old tasks: the reactor takes them out at once
        aws.begin_stopping(arn)
        task_state_change.lambda_handler(
            task_event(arn, service.cluster_arn, group="service:orders"), FakeLambdaContext()
        )
    invocation.run_pass()
    assert aws.instance_ids(sid) == set()  # the new tasks are not ready yet: no traffic to them

    for server in new_servers:
        server.behaviour = Behaviour.HEALTHY
    one_success = invocation.run_pass()
    assert not one_success.ledger  # ProbeHealthyThreshold is 2
    back = invocation.run_pass()

    assert {(c.change.value, c.record.task_arn) for c in back.ledger} == {("restored", arn) for arn in new}
    assert attributes(aws, sid) == recorded  # exactly the attributes ECS had written
    assert quarantined(aws) == {}


def test_a_task_that_fails_for_a_while_comes_back_with_exactly_its_attributes(
    aws: FleetBuilder, http: LocalHttpTargets, probing: pytest.MonkeyPatch, read_output: Any
) -> None:
    aws.create_cluster("prod")
    service = aws.create_service("prod", "orders", discovery_names=["orders"], tags=CHECK)
    sid = service.cloudmap_service_ids[0]
    arns, servers = behind(aws, http, service, [Behaviour.HEALTHY] * 4)
    before = attributes(aws, sid)
    invocation = Invocation()
    invocation.run_pass()

    servers[0].behaviour = Behaviour.FAILING  # a GC pause, a dependency blip
    results = [invocation.run_pass() for _ in range(3)]
    assert [[(d.task_arn, d.reason) for d in r.deregistrations] for r in results] == [
        [],
        [],
        [(arns[0], Reason.PROBE_FAILED)],
    ]
    record = quarantined(aws)[(sid, task_ids(arns[0]).pop())]
    assert (record.reason, dict(record.attributes)) == (Reason.PROBE_FAILED, before[task_ids(arns[0]).pop()])

    servers[0].behaviour = Behaviour.HEALTHY
    invocation.run_pass()
    invocation.run_pass()

    assert attributes(aws, sid) == before
    assert quarantined(aws) == {}


def test_an_unhealthy_task_whose_ecs_health_returns_is_registered_again(
    aws: FleetBuilder, lambda_context: FakeLambdaContext, read_output: Any
) -> None:
    aws.create_cluster("prod")
    service = aws.create_service("prod", "orders", discovery_names=["orders", "orders-grpc"])
    arns = aws.start_tasks(service, 4)
    for arn in arns:
        aws.set_health(arn, "HEALTHY")
    before = {sid: attributes(aws, sid) for sid in service.cloudmap_service_ids}
    aws.set_health(arns[0], "UNHEALTHY")

    poll(lambda_context)
    assert all(aws.instance_ids(sid) == task_ids(*arns[1:]) for sid in service.cloudmap_service_ids)
    assert len(quarantined(aws)) == 2  # one record per Cloud Map service

    aws.set_health(arns[0], "HEALTHY")
    poll(lambda_context)

    assert {sid: attributes(aws, sid) for sid in service.cloudmap_service_ids} == before
    assert quarantined(aws) == {}
    output = read_output()
    assert output.metrics.value("TasksRestored", Reason="Unhealthy") == 2
    assert output.metrics.value("TasksDeregistered", Reason="Unhealthy") == 2


def test_a_quarantined_task_that_ecs_stops_is_never_registered_again(
    aws: FleetBuilder, lambda_context: FakeLambdaContext, read_output: Any
) -> None:
    aws.create_cluster("prod")
    service = aws.create_service("prod", "orders", discovery_names=["orders"])
    arns = aws.start_tasks(service, 3)
    for arn in arns:
        aws.set_health(arn, "HEALTHY")
    aws.set_health(arns[0], "UNHEALTHY")
    poll(lambda_context)
    assert quarantined(aws)

    aws.set_health(arns[0], "HEALTHY")  # too late: ECS is replacing it
    aws.begin_stopping(arns[0])
    poll(lambda_context)

    assert aws.instance_ids(service.cloudmap_service_ids[0]) == task_ids(*arns[1:])
    assert quarantined(aws) == {}
    assert read_output().metrics.value("TasksRestored") == 0


def test_a_failure_streak_carries_over_invocations_and_a_cold_start(
    aws: FleetBuilder, http: LocalHttpTargets, probing: pytest.MonkeyPatch
) -> None:
    aws.create_cluster("prod")
    service = aws.create_service("prod", "orders", discovery_names=["orders"], tags=CHECK)
    sid = service.cloudmap_service_ids[0]
    arns, servers = behind(aws, http, service, [Behaviour.HEALTHY] * 4)
    first = Invocation("first")
    first.run_pass()  # passed once: ready
    first.end()
    servers[0].behaviour = Behaviour.FAILING

    removed_in = []
    for n, owner in enumerate(["second", "third", "after-a-cold-start"]):
        if owner == "after-a-cold-start":
            wiring.reset()  # a new container: the streak comes from the ledger
        invocation = Invocation(owner)
        result = invocation.run_pass()  # one pass per invocation: one failure each
        invocation.end()
        removed_in += [n] if result.deregistrations else []

    assert removed_in == [2]  # the third failure in a row, though each came in another invocation
    assert aws.instance_ids(sid) == task_ids(*arns[1:])


def test_two_poller_invocations_at_once_one_acts_the_other_does_nothing(aws: FleetBuilder, read_output: Any) -> None:
    aws.create_cluster("prod")
    service = aws.create_service("prod", "orders", discovery_names=["orders"])
    arns = aws.start_tasks(service, 4)
    for arn in arns:
        aws.set_health(arn, "HEALTHY")
    aws.set_health(arns[0], "UNHEALTHY")
    first, second = Invocation("first"), Invocation("second")

    acted = first.run_pass()
    idle = second.run_pass()

    assert [d.task_arn for d in acted.deregistrations] == [arns[0]]
    assert idle.lease_elsewhere
    assert (idle.deregistrations, idle.clusters_scanned, idle.complete) == ([], 0, False)
    aws.set_health(arns[1], "UNHEALTHY")
    assert second.run_pass().lease_elsewhere  # still held: renewed by its holder's passes, not expired

    first.end()  # released: the other one acts at its next pass, without waiting for an expiry
    now_acting = second.run_pass()
    assert [d.task_arn for d in now_acting.deregistrations] == [arns[1]]
    assert aws.instance_ids(service.cloudmap_service_ids[0]) == task_ids(*arns[2:])


def test_fail_open_holds_not_ready_and_probe_failed_together_and_dry_run_changes_nothing(
    aws: FleetBuilder, http: LocalHttpTargets, probing: pytest.MonkeyPatch
) -> None:
    probing.setenv("PROBE_FAILURE_THRESHOLD", "1")
    aws.create_cluster("prod")
    service = aws.create_service("prod", "orders", discovery_names=["orders"], tags=CHECK)
    sid = service.cloudmap_service_ids[0]
    ready, servers = behind(aws, http, service, [Behaviour.HEALTHY] * 4)
    invocation = Invocation()
    invocation.run_pass()
    for server in servers[:2]:
        server.behaviour = Behaviour.FAILING  # ProbeFailed (they have been ready)
    starting, _ = behind(aws, http, service, [Behaviour.FAILING] * 2)  # never ready: NotReady
    # 6 running, 3 must stay; alone, either kind could leave (4 healthy for NotReady, 4 for
    # ProbeFailed), together only 2 healthy and registered would be left: held
    held = invocation.run_pass()

    assert aws.instance_ids(sid) == task_ids(*ready, *starting)
    assert [(v.running, v.healthy_registered, v.required, v.holds) for v in held.fail_open] == [(6, 2, 3, True)]
    assert quarantined(aws) == {}
    invocation.end()

    probing.setenv("DRY_RUN", "true")
    probing.setenv("MIN_HEALTHY_PERCENT", "0")
    wiring.reset()
    dry = Invocation("dry")
    planned = [dry.run_pass() for _ in range(2)]
    assert {(d.outcome.value, d.reason) for r in planned for d in r.deregistrations} == {
        ("dry_run", Reason.PROBE_FAILED),
        ("dry_run", Reason.NOT_READY),
    }
    assert aws.instance_ids(sid) == task_ids(*ready, *starting)
    assert quarantined(aws) == {}


def test_hold_until_healthy_keeps_a_starting_task_out_until_ecs_reports_it_healthy(
    aws: FleetBuilder, lambda_context: FakeLambdaContext
) -> None:
    aws.create_cluster("prod")
    service = aws.create_service(
        "prod", "orders", discovery_names=["orders"], tags={"cloudmap-reactor:hold-until-healthy": "true"}
    )
    sid = service.cloudmap_service_ids[0]
    arns = aws.start_tasks(service, 3)
    for arn in arns:
        aws.set_health(arn, "HEALTHY")
    starting = aws.start_tasks(service, 1)[0]  # UNKNOWN: its container health check has not passed yet
    before = attributes(aws, sid)[task_ids(starting).pop()]

    poll(lambda_context)
    assert aws.instance_ids(sid) == task_ids(*arns)
    assert next(iter(quarantined(aws).values())).reason is Reason.NOT_READY

    aws.set_health(starting, "HEALTHY")
    poll(lambda_context)
    assert attributes(aws, sid)[task_ids(starting).pop()] == before


def test_a_task_quarantined_for_failed_probes_too_long_is_replaced(
    aws: FleetBuilder, http: LocalHttpTargets, probing: pytest.MonkeyPatch, read_output: Any
) -> None:
    probing.setenv("REPLACE_AFTER_SECONDS", "60")
    probing.setenv("PROBE_FAILURE_THRESHOLD", "1")
    aws.create_cluster("prod")
    service = aws.create_service("prod", "orders", discovery_names=["orders"], tags=CHECK)
    arns, servers = behind(aws, http, service, [Behaviour.HEALTHY] * 4)
    invocation = Invocation()
    invocation.run_pass()
    servers[0].behaviour = Behaviour.FAILING
    invocation.run_pass()
    assert quarantined(aws)

    assert not invocation.run_pass().ledger  # quarantined for less than a minute: left alone
    invocation.end()
    later = Invocation("a-minute-later")
    later.scanner._clock = lambda: time.time() + 61
    replaced = later.run_pass()

    assert [(c.change.value, c.record.task_arn) for c in replaced.ledger] == [("replaced", arns[0])]
    task = boto3.client("ecs").describe_tasks(cluster=service.cluster_arn, tasks=[arns[0]])["tasks"][0]
    assert task["desiredStatus"] == "STOPPED"


def started(arn: str, service: SeededService, context: FakeLambdaContext) -> dict[str, Any]:
    """The ECS event of a started task (lastStatus RUNNING), as the ReadinessEvents rule sends it."""
    event = task_event(arn, service.cluster_arn, group=f"service:{service.name}", desired_status="RUNNING")
    result: dict[str, Any] = task_state_change.lambda_handler(event, context)
    return result


def test_readiness_events_hold_a_starting_task_out_within_seconds_and_bring_it_back(
    aws: FleetBuilder, lambda_context: FakeLambdaContext, read_output: Any
) -> None:
    aws.create_cluster("prod")
    service = aws.create_service(
        "prod", "orders", discovery_names=["orders"], tags={"cloudmap-reactor:hold-until-healthy": "true"}
    )
    sid = service.cloudmap_service_ids[0]
    for arn in aws.start_tasks(service, 3):
        aws.set_health(arn, "HEALTHY")
    starting = aws.start_tasks(service, 1)[0]  # registered by Service Connect, health check still starting
    before = attributes(aws, sid)

    assert started(starting, service, lambda_context)["outcomes"] == {sid: "deregistered"}
    assert task_ids(starting).isdisjoint(aws.instance_ids(sid))
    assert next(iter(quarantined(aws).values())).reason is Reason.NOT_READY

    aws.set_health(starting, "HEALTHY")  # ECS sends another event when the health status changes
    assert started(starting, service, lambda_context)["restored"] == 1
    assert attributes(aws, sid) == before
    assert quarantined(aws) == {}
    assert read_output().metrics.value("TasksRestored", Reason="NotReady") == 1


def test_readiness_events_never_empty_a_service_and_ignore_services_not_held(
    aws: FleetBuilder, lambda_context: FakeLambdaContext
) -> None:
    aws.create_cluster("prod")
    held = aws.create_service(
        "prod", "orders", discovery_names=["orders"], tags={"cloudmap-reactor:hold-until-healthy": "true"}
    )
    only = aws.start_tasks(held, 1)[0]  # the first task of a new service: nothing healthy to fall back on
    plain = aws.create_service("prod", "search", discovery_names=["search"])
    other = aws.start_tasks(plain, 1)[0]

    assert started(only, held, lambda_context)["outcomes"] == {}  # fail-open
    assert started(other, plain, lambda_context) == {"status": "ignored"}

    assert aws.instance_ids(held.cloudmap_service_ids[0]) == task_ids(only)
    assert aws.instance_ids(plain.cloudmap_service_ids[0]) == task_ids(other)
    assert quarantined(aws) == {}
