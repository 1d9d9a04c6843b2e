"""The reactor against the local emulator: assertions are on Cloud Map's state afterwards."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from botocore.stub import Stubber
from moto.core.exceptions import JsonRESTError
from moto.ecs.models import EC2ContainerServiceBackend

from cloudmap_reactor import wiring
from cloudmap_reactor.adapters.clients import TOTAL_MAX_ATTEMPTS, cloudmap_client, ecs_client
from cloudmap_reactor.adapters.cloudmap import OPERATION_POLL_WAITS, CloudMapDeregistrar
from cloudmap_reactor.adapters.ecs import SERVICE_FAILURE_RETRIES
from cloudmap_reactor.handlers import task_state_change
from devtools.aws_emulator import FleetBuilder, SeededService
from devtools.local_lambda import FakeLambdaContext
from tests import virtual_time
from tests.conftest import count_calls, load_event, task_event, task_ids
from tests.virtual_time import VirtualTime

Fleet = tuple[SeededService, SeededService]


@pytest.fixture
def fleet(aws: FleetBuilder) -> Fleet:
    """Cluster ``prod``: ``orders`` (two discovery names, 3 tasks) and ``payments`` (one name, 2 tasks)."""
    aws.create_cluster("prod")
    orders = aws.create_service("prod", "orders", discovery_names=["orders", "orders-grpc"])
    payments = aws.create_service("prod", "payments", discovery_names=["payments"])
    aws.start_tasks(orders, 3)
    aws.start_tasks(payments, 2)
    return orders, payments


def registered(aws: FleetBuilder, service: SeededService) -> dict[str, set[str]]:
    return {sid: aws.instance_ids(sid) for sid in service.cloudmap_service_ids}


def invoke(event: Any, context: FakeLambdaContext) -> dict[str, Any]:
    result: dict[str, Any] = task_state_change.lambda_handler(event, context)
    return result


def test_stopping_task_leaves_every_cloudmap_service_of_its_service(
    aws: FleetBuilder, fleet: Fleet, lambda_context: FakeLambdaContext, read_output: Any
) -> None:
    orders, payments = fleet
    leaving = orders.task_arns[0]
    aws.begin_stopping(leaving)

    result = invoke(task_event(leaving, orders.cluster_arn, group="service:orders"), lambda_context)

    assert result["status"] == "processed"
    for instances in registered(aws, orders).values():
        assert instances == task_ids(*orders.task_arns[1:])
    assert registered(aws, payments) == {payments.cloudmap_service_ids[0]: task_ids(*payments.task_arns)}
    output = read_output()
    assert output.metrics.value("TasksDeregistered", Reason="TaskStopping", service="cloudmap-reactor") == 2
    assert output.metrics.value("DeregistrationErrors") == 0
    assert {"Reason", "service"} in output.metrics.dimension_sets("TasksDeregistered")


def test_task_of_older_deployment_is_removed_from_the_old_discovery_names(
    aws: FleetBuilder, fleet: Fleet, lambda_context: FakeLambdaContext
) -> None:
    orders, _ = fleet
    old_ids = list(orders.cloudmap_service_ids)
    new_ids = aws.start_rolling_update(orders, discovery_names=["orders-v2"])
    new_task = aws.start_tasks(orders, 1, register_in=new_ids)[0]
    old_task = orders.task_arns[0]

    invoke(task_event(old_task, orders.cluster_arn, group="service:orders"), lambda_context)

    for sid in old_ids:
        assert aws.instance_ids(sid) == task_ids(*orders.task_arns[1:3])
    assert aws.instance_ids(new_ids[0]) == task_ids(new_task)


def test_duplicate_and_stopped_events_are_harmless(
    aws: FleetBuilder, fleet: Fleet, lambda_context: FakeLambdaContext, read_output: Any
) -> None:
    orders, _ = fleet
    leaving = orders.task_arns[1]
    stopping = task_event(leaving, orders.cluster_arn, group="service:orders")
    stopped = task_event(
        leaving, orders.cluster_arn, group="service:orders", last_status="STOPPED", template="task-stopped.json"
    )

    first = invoke(stopping, lambda_context)
    again = invoke(copy.deepcopy(stopping), lambda_context)
    final = invoke(stopped, lambda_context)

    assert set(first["outcomes"].values()) == {"deregistered"}
    assert set(again["outcomes"].values()) == {"already_gone"}
    assert set(final["outcomes"].values()) == {"already_gone"}
    for instances in registered(aws, orders).values():
        assert instances == task_ids(orders.task_arns[0], orders.task_arns[2])
    output = read_output()
    assert output.metrics.value("TasksDeregistered", Reason="TaskStopping") == 2
    assert output.metrics.value("DeregistrationErrors") == 0


def test_task_is_looked_up_in_the_cluster_named_by_the_event(
    aws: FleetBuilder, fleet: Fleet, lambda_context: FakeLambdaContext
) -> None:
    orders, _ = fleet
    aws.create_cluster("staging")
    staging_orders = aws.create_service("staging", "orders", discovery_names=["orders"], namespace="staging")
    aws.start_tasks(staging_orders, 2)
    before_prod = registered(aws, orders)

    invoke(task_event(staging_orders.task_arns[0], staging_orders.cluster_arn, group="service:orders"), lambda_context)

    assert aws.instance_ids(staging_orders.cloudmap_service_ids[0]) == task_ids(staging_orders.task_arns[1])
    assert registered(aws, orders) == before_prod


@pytest.mark.parametrize(
    ("name", "changes"),
    [
        ("running task", {"desiredStatus": "RUNNING"}),
        ("standalone task", {"group": "family:nightly-report"}),
    ],
)
def test_running_and_standalone_tasks_change_nothing(
    aws: FleetBuilder,
    fleet: Fleet,
    lambda_context: FakeLambdaContext,
    read_output: Any,
    name: str,
    changes: dict[str, str],
) -> None:
    orders, payments = fleet
    before = registered(aws, orders) | registered(aws, payments)
    event = task_event(orders.task_arns[0], orders.cluster_arn, group="service:orders")
    event["detail"].update(changes)

    assert invoke(event, lambda_context)["status"] == "ignored", name
    assert registered(aws, orders) | registered(aws, payments) == before
    assert read_output().metrics.value("InvalidEvents") == 0


def test_service_without_service_connect_is_left_alone(
    aws: FleetBuilder, fleet: Fleet, lambda_context: FakeLambdaContext, read_output: Any
) -> None:
    orders, _ = fleet
    worker = aws.create_service("prod", "worker")
    task = aws.start_tasks(worker, 1)[0]
    before = registered(aws, orders)

    result = invoke(task_event(task, worker.cluster_arn, group="service:worker"), lambda_context)

    assert result == {"status": "processed", "outcomes": {}}
    assert registered(aws, orders) == before
    assert read_output().metrics.value("TasksDeregistered") == 0


def test_cluster_outside_cluster_arns_is_ignored(
    aws: FleetBuilder, fleet: Fleet, env: pytest.MonkeyPatch, lambda_context: FakeLambdaContext
) -> None:
    orders, _ = fleet
    env.setenv("CLUSTER_ARNS", "arn:aws:ecs:us-east-1:123456789012:cluster/other")
    before = registered(aws, orders)

    result = invoke(task_event(orders.task_arns[0], orders.cluster_arn, group="service:orders"), lambda_context)

    assert result["status"] == "ignored"
    assert registered(aws, orders) == before


def test_dry_run_changes_nothing_and_counts_what_it_would_do(
    aws: FleetBuilder, fleet: Fleet, env: pytest.MonkeyPatch, lambda_context: FakeLambdaContext, read_output: Any
) -> None:
    orders, _ = fleet
    env.setenv("DRY_RUN", "true")
    before = registered(aws, orders)

    result = invoke(task_event(orders.task_arns[0], orders.cluster_arn, group="service:orders"), lambda_context)

    assert set(result["outcomes"].values()) == {"dry_run"}
    assert registered(aws, orders) == before
    output = read_output()
    assert output.metrics.value("DryRunDeregistrations", Reason="TaskStopping") == 2
    assert output.metrics.value("TasksDeregistered") == 0


def test_burst_for_one_service_costs_one_describe_services(
    aws: FleetBuilder, fleet: Fleet, lambda_context: FakeLambdaContext, mocker: Any
) -> None:
    orders, _ = fleet
    describe = mocker.spy(ecs_client(), "describe_services")
    deregister = mocker.spy(cloudmap_client(), "deregister_instance")

    for task in orders.task_arns:
        invoke(task_event(task, orders.cluster_arn, group="service:orders"), lambda_context)

    assert describe.call_count == 1
    assert deregister.call_count == 2 * len(orders.task_arns)
    assert all(not instances for instances in registered(aws, orders).values())


def test_cache_expires_after_its_ttl(
    aws: FleetBuilder, fleet: Fleet, env: pytest.MonkeyPatch, lambda_context: FakeLambdaContext, mocker: Any
) -> None:
    orders, _ = fleet
    env.setenv("SERVICE_CACHE_TTL_SECONDS", "0")
    describe = mocker.spy(ecs_client(), "describe_services")

    for task in orders.task_arns[:2]:
        invoke(task_event(task, orders.cluster_arn, group="service:orders"), lambda_context)

    assert describe.call_count == 2


@pytest.mark.parametrize("code", ["ThrottlingException", "ServiceUnavailable", "InternalServerError"])
def test_cloudmap_fault_raises_so_the_event_is_retried_then_dead_lettered(
    aws: FleetBuilder, fleet: Fleet, lambda_context: FakeLambdaContext, read_output: Any, code: str
) -> None:
    orders, _ = fleet
    client = cloudmap_client()
    with Stubber(client) as stub:
        for _ in orders.cloudmap_service_ids:
            stub.add_client_error("deregister_instance", service_error_code=code, http_status_code=503)
        wiring.reactor_deps()  # the stubbed client is the container's client
        with pytest.raises(task_state_change.DeregistrationFailed):
            invoke(task_event(orders.task_arns[0], orders.cluster_arn, group="service:orders"), lambda_context)

    output = read_output()
    assert output.metrics.value("DeregistrationErrors") == 2
    assert "Failed to deregister task from Cloud Map" in output.messages("ERROR")
    for instances in registered(aws, orders).values():
        assert task_ids(orders.task_arns[0]) <= instances


@pytest.fixture
def clock(aws: FleetBuilder, mocker: Any) -> VirtualTime:
    """Virtual time (no real back-off or rate-limiter wait), and the Cloud Map adapter sleeping on it.

    After ``aws``: the emulator patches of a test are undone before the emulator's own.
    """
    virtual = virtual_time.install(mocker)
    mocker.patch(
        "cloudmap_reactor.wiring.CloudMapDeregistrar",
        lambda client: CloudMapDeregistrar(client, sleep=virtual.sleep),
    )
    return virtual


class Throttled(JsonRESTError):
    def __init__(self) -> None:
        super().__init__("ThrottlingException", "Rate exceeded")


def test_ecs_fault_is_retried_by_botocore_then_raised_and_counted(
    aws: FleetBuilder,
    fleet: Fleet,
    lambda_context: FakeLambdaContext,
    read_output: Any,
    clock: VirtualTime,
    mocker: Any,
) -> None:
    """The emulator throttles every DescribeServices: botocore's attempts, then the event goes to the DLQ."""
    orders, _ = fleet
    answered: list[str] = []

    def describe_services(_self: Any, _cluster: str, names: list[str]) -> Any:
        answered.append("ThrottlingException")
        raise Throttled

    mocker.patch.object(EC2ContainerServiceBackend, "describe_services", describe_services)

    with pytest.raises(task_state_change.DeregistrationFailed) as raised:
        invoke(task_event(orders.task_arns[0], orders.cluster_arn, group="service:orders"), lambda_context)

    message = str(raised.value)
    assert message.startswith(f"ECS service lookup failed for {orders.task_arns[0]}: DescribeServices on ")
    assert "ThrottlingException" in message
    assert f"reached max retries: {TOTAL_MAX_ATTEMPTS - 1}" in message
    assert answered == ["ThrottlingException"] * TOTAL_MAX_ATTEMPTS
    assert all(task_ids(orders.task_arns[0]) <= i for i in registered(aws, orders).values())
    output = read_output()
    assert output.metrics.value("DeregistrationErrors") == 1
    assert "Could not look up the task's ECS service; nothing deregistered" in output.messages("ERROR")


def failing_for(mocker: Any, service: str, rounds: int, reason: str = "SERVICE_UNAVAILABLE") -> list[list[str]]:
    """DescribeServices answers a ``failures`` entry (HTTP 200) for ``service`` in its first ``rounds`` calls.

    Returns the services each call asked for.
    """
    asked: list[list[str]] = []
    real = EC2ContainerServiceBackend.describe_services

    def describe_services(self: Any, cluster: str, names: list[str]) -> Any:
        asked.append([n.rsplit("/", 1)[-1] for n in names])
        found, failures = real(self, cluster, names)
        if len(asked) <= rounds:
            failing = [s for s in found if s.name == service]
            found = [s for s in found if s.name != service]
            failures += [{"arn": s.physical_resource_id, "reason": reason} for s in failing]
        return found, failures

    mocker.patch.object(EC2ContainerServiceBackend, "describe_services", describe_services)
    return asked


def test_describe_services_failures_are_asked_again_for_the_failed_services_only(
    fleet: Fleet, clock: VirtualTime, mocker: Any
) -> None:
    orders, _ = fleet
    asked = failing_for(mocker, "orders", rounds=1)

    found = wiring.reactor_deps().services.directory.describe_services(orders.cluster_arn, ["orders", "payments"])

    assert sorted(s.service_name for s in found) == ["orders", "payments"]
    assert asked == [["orders", "payments"], ["orders"]]


def test_partial_describe_services_failure_asked_again_and_the_task_leaves(
    aws: FleetBuilder, fleet: Fleet, lambda_context: FakeLambdaContext, clock: VirtualTime, mocker: Any
) -> None:
    orders, _ = fleet
    asked = failing_for(mocker, "orders", rounds=SERVICE_FAILURE_RETRIES)

    result = invoke(task_event(orders.task_arns[0], orders.cluster_arn, group="service:orders"), lambda_context)

    assert set(result["outcomes"].values()) == {"deregistered"}
    assert len(asked) == SERVICE_FAILURE_RETRIES + 1
    for instances in registered(aws, orders).values():
        assert instances == task_ids(*orders.task_arns[1:])


def test_persistent_describe_services_failure_goes_to_the_dlq_and_is_not_cached(
    aws: FleetBuilder,
    fleet: Fleet,
    lambda_context: FakeLambdaContext,
    read_output: Any,
    clock: VirtualTime,
    mocker: Any,
) -> None:
    """ECS cannot describe the service: the event is raised (DLQ), and the next one asks ECS again."""
    orders, _ = fleet
    asked = failing_for(mocker, "orders", rounds=SERVICE_FAILURE_RETRIES + 1)
    event = task_event(orders.task_arns[0], orders.cluster_arn, group="service:orders")

    with pytest.raises(task_state_change.DeregistrationFailed, match="SERVICE_UNAVAILABLE"):
        invoke(event, lambda_context)
    assert len(asked) == SERVICE_FAILURE_RETRIES + 1
    assert read_output().metrics.value("DeregistrationErrors") == 1

    result = invoke(copy.deepcopy(event), lambda_context)  # Lambda's retry of the event, a second later

    assert set(result["outcomes"].values()) == {"deregistered"}
    assert len(asked) == SERVICE_FAILURE_RETRIES + 2  # asked again: the failure was not cached as "not found"
    for instances in registered(aws, orders).values():
        assert instances == task_ids(*orders.task_arns[1:])


def test_missing_service_is_not_an_error(
    fleet: Fleet, lambda_context: FakeLambdaContext, read_output: Any, clock: VirtualTime
) -> None:
    orders, _ = fleet

    result = invoke(task_event(orders.task_arns[0], orders.cluster_arn, group="service:deleted"), lambda_context)

    assert result == {"status": "processed", "outcomes": {}}
    assert read_output().metrics.value("DeregistrationErrors") == 0


def test_each_deregistration_is_followed_until_cloud_map_reports_success(
    aws: FleetBuilder, fleet: Fleet, lambda_context: FakeLambdaContext, read_output: Any, clock: VirtualTime
) -> None:
    orders, _ = fleet
    aws.script_operations("SUBMITTED", "PENDING", "SUCCESS")
    calls = count_calls(cloudmap_client())

    result = invoke(task_event(orders.task_arns[0], orders.cluster_arn, group="service:orders"), lambda_context)

    assert set(result["outcomes"].values()) == {"deregistered"}
    assert calls.counts == {"DeregisterInstance": 2, "GetOperation": 6}
    assert clock.slept == list(OPERATION_POLL_WAITS[1:3]) * 2
    output = read_output()
    assert output.metrics.value("TasksDeregistered", Reason="TaskStopping") == 2
    assert output.metrics.value("DeregistrationErrors") == 0


def test_failed_deregistration_operation_is_an_error_and_goes_to_the_dlq(
    aws: FleetBuilder, fleet: Fleet, lambda_context: FakeLambdaContext, read_output: Any, clock: VirtualTime
) -> None:
    orders, _ = fleet
    aws.script_operations("PENDING", "FAIL", error_code="INTERNAL_FAILURE", error_message="Cloud Map had a bad day")

    with pytest.raises(task_state_change.DeregistrationFailed, match="2 deregistration"):
        invoke(task_event(orders.task_arns[0], orders.cluster_arn, group="service:orders"), lambda_context)

    for instances in registered(aws, orders).values():
        assert task_ids(orders.task_arns[0]) <= instances
    output = read_output()
    assert output.metrics.value("DeregistrationErrors") == 2
    assert output.metrics.value("TasksDeregistered") == 0
    errors = [r["error"] for r in output.logs if r["message"] == "Failed to deregister task from Cloud Map"]
    assert len(errors) == 2
    assert all("ended FAIL (INTERNAL_FAILURE: Cloud Map had a bad day)" in e for e in errors)


def test_deregistration_still_pending_after_the_polls_counts_as_removed_and_says_so(
    aws: FleetBuilder, fleet: Fleet, lambda_context: FakeLambdaContext, read_output: Any, clock: VirtualTime
) -> None:
    _, payments = fleet
    aws.script_operations("PENDING")
    calls = count_calls(cloudmap_client())

    result = invoke(task_event(payments.task_arns[0], payments.cluster_arn, group="service:payments"), lambda_context)

    assert set(result["outcomes"].values()) == {"deregistered"}
    assert calls.counts["GetOperation"] == len(OPERATION_POLL_WAITS)
    assert sum(clock.slept) == sum(OPERATION_POLL_WAITS)
    output = read_output()
    assert output.metrics.value("DeregistrationErrors") == 0
    pending = next(r for r in output.logs if r["message"].startswith("Cloud Map deregistration still in progress"))
    assert pending["operation_status"] == "PENDING"
    assert pending["level"] == "WARNING"


def test_confirming_deregistrations_stops_at_the_deadline(
    aws: FleetBuilder, fleet: Fleet, lambda_context: FakeLambdaContext, read_output: Any, clock: VirtualTime
) -> None:
    """0.5 s before the deadline: each operation is asked about while there is time, then counted as removed."""
    orders, _ = fleet
    aws.script_operations("PENDING")
    lambda_context.remaining_ms = int((task_state_change.DEADLINE_MARGIN_SECONDS + 0.5) * 1000)
    deadline = clock.now + 0.5
    calls = count_calls(cloudmap_client())

    result = invoke(task_event(orders.task_arns[0], orders.cluster_arn, group="service:orders"), lambda_context)

    assert set(result["outcomes"].values()) == {"deregistered"}
    assert clock.now <= deadline
    assert clock.slept == [OPERATION_POLL_WAITS[1]]  # then no time for the next wait, and none for a second one
    assert calls.counts == {"DeregisterInstance": 2, "GetOperation": 3}
    output = read_output()
    assert output.metrics.value("DeregistrationErrors") == 0
    assert output.messages("WARNING").count("Cloud Map deregistration still in progress; counted as removed") == 2


def test_documented_sample_event_validates_and_replays(aws: FleetBuilder, lambda_context: FakeLambdaContext) -> None:
    """The events/ files are what the demo and ``sam local invoke`` replay."""
    aws.create_cluster("prod")
    orders = aws.create_service("prod", "orders", discovery_names=["orders"])
    event = load_event("task-stopping.json")
    task_id = event["detail"]["taskArn"].rsplit("/", 1)[-1]
    aws.start_tasks(orders, 2, task_ids=[task_id])

    result = invoke(event, lambda_context)

    assert result["status"] == "processed"
    assert task_id not in aws.instance_ids(orders.cloudmap_service_ids[0])
    assert len(aws.instance_ids(orders.cloudmap_service_ids[0])) == 1
