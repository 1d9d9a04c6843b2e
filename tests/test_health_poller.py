"""The health poller against the local emulator: one pass, then Cloud Map's state."""

from __future__ import annotations

from typing import Any

import pytest
from botocore.exceptions import ClientError

from cloudmap_reactor import wiring
from cloudmap_reactor.adapters.clients import cloudmap_client, ecs_client
from cloudmap_reactor.handlers import health_poller
from devtools.aws_emulator import FleetBuilder, SeededService
from devtools.local_lambda import FakeLambdaContext
from tests.conftest import FakeTime, count_calls, poll, task_ids


@pytest.fixture
def orders(aws: FleetBuilder) -> SeededService:
    """``orders`` in cluster ``prod``: two discovery names, 4 tasks, all HEALTHY to start with."""
    aws.create_cluster("prod")
    service = aws.create_service("prod", "orders", discovery_names=["orders", "orders-grpc"])
    for arn in aws.start_tasks(service, 4):
        aws.set_health(arn, "HEALTHY")
    return service


def test_one_pass_removes_unhealthy_running_tasks_only(
    aws: FleetBuilder, orders: SeededService, lambda_context: FakeLambdaContext, read_output: Any
) -> None:
    sick, unknown, *healthy = orders.task_arns
    aws.set_health(sick, "UNHEALTHY")
    aws.set_health(unknown, "UNKNOWN")

    result = poll(lambda_context)

    assert result["status"] == "completed"
    for sid in orders.cloudmap_service_ids:
        assert aws.instance_ids(sid) == task_ids(unknown, *healthy)
    output = read_output()
    assert output.metrics.value("TasksDeregistered", Reason="Unhealthy") == 2
    assert output.metrics.value("UnhealthyTasksFound") == 1
    assert output.metrics.value("HealthScanCompleted") == 1
    assert output.metrics.dimension_sets("HealthScanDuration") == [{"service"}]


def test_a_task_ecs_is_stopping_is_not_unhealthy_business_but_reconciliation_removes_it(
    aws: FleetBuilder, orders: SeededService, lambda_context: FakeLambdaContext, read_output: Any
) -> None:
    """ListTasks(desiredStatus=RUNNING) no longer returns it; reconciliation finds it among the instances."""
    aws.set_health(orders.task_arns[0], "UNHEALTHY")
    aws.begin_stopping(orders.task_arns[0])

    poll(lambda_context)

    assert aws.instance_ids(orders.cloudmap_service_ids[0]) == task_ids(*orders.task_arns[1:])
    output = read_output()
    assert output.metrics.value("UnhealthyTasksFound") == 0
    assert output.metrics.value("TasksDeregistered", Reason="Reconciled") == 2
    assert output.metrics.value("TasksDeregistered", Reason="Unhealthy") == 0


def test_without_reconciliation_a_stopping_task_is_left_to_the_reactor(
    aws: FleetBuilder, orders: SeededService, env: pytest.MonkeyPatch, lambda_context: FakeLambdaContext
) -> None:
    env.setenv("RECONCILE_EVERY_PASSES", "0")
    aws.set_health(orders.task_arns[0], "UNHEALTHY")
    aws.begin_stopping(orders.task_arns[0])

    poll(lambda_context)

    assert aws.instance_ids(orders.cloudmap_service_ids[0]) == task_ids(*orders.task_arns)


def test_services_without_service_connect_and_standalone_tasks_are_ignored(
    aws: FleetBuilder, orders: SeededService, lambda_context: FakeLambdaContext, read_output: Any
) -> None:
    plain = aws.create_service("prod", "worker")
    plain_task = aws.start_tasks(plain, 1)[0]
    aws.set_health(plain_task, "UNHEALTHY")
    job = aws.run_standalone_task("prod", "nightly-report")
    aws.set_health(job, "UNHEALTHY")

    poll(lambda_context)

    assert aws.instance_ids(orders.cloudmap_service_ids[0]) == task_ids(*orders.task_arns)
    output = read_output()
    assert output.metrics.value("UnhealthyTasksFound") == 0
    assert output.metrics.value("TasksDeregistered") == 0


def test_dry_run_changes_nothing(
    aws: FleetBuilder,
    orders: SeededService,
    env: pytest.MonkeyPatch,
    lambda_context: FakeLambdaContext,
    read_output: Any,
) -> None:
    env.setenv("DRY_RUN", "true")
    aws.set_health(orders.task_arns[0], "UNHEALTHY")

    poll(lambda_context)

    for sid in orders.cloudmap_service_ids:
        assert aws.instance_ids(sid) == task_ids(*orders.task_arns)
    output = read_output()
    assert output.metrics.value("DryRunDeregistrations", Reason="Unhealthy") == 2
    assert output.metrics.value("UnhealthyTasksFound") == 1
    assert output.metrics.value("TasksDeregistered") == 0


def test_scans_every_cluster_by_default_and_only_the_configured_ones_otherwise(
    aws: FleetBuilder,
    orders: SeededService,
    env: pytest.MonkeyPatch,
    lambda_context: FakeLambdaContext,
) -> None:
    aws.create_cluster("staging")
    staging = aws.create_service("staging", "orders", discovery_names=["orders"], namespace="staging")
    staging_task = aws.start_tasks(staging, 2)[0]
    aws.set_health(staging_task, "UNHEALTHY")
    aws.set_health(orders.task_arns[0], "UNHEALTHY")
    env.setenv("CLUSTER_ARNS", orders.cluster_arn)

    poll(lambda_context)

    assert aws.instance_ids(staging.cloudmap_service_ids[0]) == task_ids(*staging.task_arns)
    assert orders.task_arns[0].rsplit("/", 1)[-1] not in aws.instance_ids(orders.cloudmap_service_ids[0])

    env.delenv("CLUSTER_ARNS")
    wiring.reset()
    poll(lambda_context)

    assert aws.instance_ids(staging.cloudmap_service_ids[0]) == task_ids(staging.task_arns[1])


def test_first_pass_reads_services_then_each_pass_costs_the_batching_floor(
    aws: FleetBuilder, env: pytest.MonkeyPatch, lambda_context: FakeLambdaContext, fake_time: FakeTime
) -> None:
    """23 services, 250 tasks: services read once, 3 DescribeTasks per pass of the task ids Cloud
    Map holds; every running task is registered, so ECS lists none."""
    env.setenv("POLL_WINDOW_SECONDS", "40")
    env.setenv("POLL_INTERVAL_SECONDS", "10")
    env.setenv("SERVICE_REFRESH_PASSES", "100")
    env.setenv("RECONCILE_EVERY_PASSES", "100")  # the first pass only
    env.setenv("ECS_READS_PER_SECOND", "0")
    aws.create_cluster("big")
    services = [aws.create_service("big", f"svc-{i:02d}", discovery_names=[f"svc-{i:02d}"]) for i in range(23)]
    for service in services[:5]:
        aws.start_tasks(service, 50)
    ecs = count_calls(ecs_client())
    cloudmap = count_calls(cloudmap_client())
    sizes: dict[str, list[int]] = {"DescribeServices": [], "DescribeTasks": []}

    def batch_size(params: dict[str, Any], model: Any, **_: Any) -> None:
        if model.name in sizes:
            sizes[model.name].append(len(params.get("services") or params.get("tasks") or []))

    ecs_client().meta.events.register("provide-client-params.ecs", batch_size)

    result = poll(lambda_context)

    passes = result["passes"]
    assert passes >= 2
    assert result["tasks_examined"] == 250 * passes
    assert ecs.counts["ListServices"] == 1  # 23 services fit in one page of 100
    assert sizes["DescribeServices"] == [10, 10, 3]  # first pass only
    assert ecs.counts["ListTasks"] == 0
    assert sorted(sizes["DescribeTasks"]) == sorted([100, 100, 50] * passes)
    assert cloudmap.counts == {"ListInstances": 23 * passes}  # the task ids; nothing to remove


def test_a_service_created_between_passes_is_described_once_at_the_next_refresh(
    aws: FleetBuilder,
    orders: SeededService,
    env: pytest.MonkeyPatch,
    lambda_context: FakeLambdaContext,
    fake_time: FakeTime,
) -> None:
    env.setenv("POLL_WINDOW_SECONDS", "40")
    env.setenv("SERVICE_REFRESH_PASSES", "2")
    ecs = count_calls(ecs_client())
    created: list[SeededService] = []

    def new_service() -> None:  # between passes, a new Service Connect service starts its tasks
        if not created:
            created.append(aws.create_service("prod", "search", discovery_names=["search"]))
            aws.set_health(aws.start_tasks(created[0], 2)[0], "UNHEALTHY")

    fake_time.on_sleep = new_service

    result = poll(lambda_context)

    assert result["passes"] == 3
    assert ecs.counts["ListServices"] == 2
    assert ecs.counts["DescribeServices"] == 2  # orders on the first pass, orders and search on the third
    assert aws.instance_ids(created[0].cloudmap_service_ids[0]) == task_ids(created[0].task_arns[1])


def test_a_failing_cluster_does_not_stop_the_others_and_withholds_the_heartbeat(
    aws: FleetBuilder,
    orders: SeededService,
    env: pytest.MonkeyPatch,
    lambda_context: FakeLambdaContext,
    read_output: Any,
    mocker: Any,
) -> None:
    broken = aws.create_cluster("broken")
    aws.set_health(orders.task_arns[0], "UNHEALTHY")
    env.setenv("CLUSTER_ARNS", f"{broken},{orders.cluster_arn}")
    client = ecs_client()
    real_list_services = client.list_services

    def list_services(**kwargs: Any) -> Any:
        if kwargs["cluster"] == broken:
            raise ClientError({"Error": {"Code": "AccessDeniedException", "Message": "denied"}}, "ListServices")
        return real_list_services(**kwargs)

    mocker.patch.object(client, "list_services", side_effect=list_services)

    with pytest.raises(health_poller.HealthScanIncomplete, match="1 cluster"):
        poll(lambda_context)

    assert orders.task_arns[0].rsplit("/", 1)[-1] not in aws.instance_ids(orders.cloudmap_service_ids[0])
    output = read_output()
    assert output.metrics.value("HealthScanCompleted") == 0
    assert output.metrics.value("TasksDeregistered", Reason="Unhealthy") == 2
    assert "Could not scan cluster" in output.messages("ERROR")


def test_a_task_still_unhealthy_on_later_passes_is_not_deregistered_again(
    aws: FleetBuilder,
    orders: SeededService,
    env: pytest.MonkeyPatch,
    lambda_context: FakeLambdaContext,
    fake_time: FakeTime,
    read_output: Any,
) -> None:
    """ECS keeps an UNHEALTHY task until its replacement runs: one DeregisterInstance per name, not per pass."""
    env.setenv("POLL_WINDOW_SECONDS", "40")
    aws.set_health(orders.task_arns[0], "UNHEALTHY")
    cloudmap = count_calls(cloudmap_client())

    result = poll(lambda_context)

    assert result["passes"] >= 2
    assert cloudmap.counts["DeregisterInstance"] == len(orders.cloudmap_service_ids)
    output = read_output()
    assert output.metrics.value("UnhealthyTasksFound") == result["passes"]
    assert output.metrics.value("HealthScanCompleted") == result["passes"]
    assert output.metrics.value("TasksDeregistered", Reason="Unhealthy") == 2
