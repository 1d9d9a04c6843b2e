"""Never make things worse: fail-open, tag scoping, classic service discovery, reconciliation, load.

Against the local emulator; assertions are on Cloud Map's registrations and the metrics emitted.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from cloudmap_reactor.handlers import task_state_change
from devtools.aws_emulator import FleetBuilder, SeededService
from devtools.local_lambda import FakeLambdaContext
from tests.conftest import poll, task_event, task_ids


def stop(service: SeededService, task_arn: str, context: FakeLambdaContext) -> dict[str, Any]:
    result: dict[str, Any] = task_state_change.lambda_handler(
        task_event(task_arn, service.cluster_arn, group=f"service:{service.name}"), context
    )
    return result


def registered(aws: FleetBuilder, service: SeededService) -> set[str]:
    """Instance ids in the service's Cloud Map services (all of them must agree)."""
    sets = [aws.instance_ids(sid) for sid in service.cloudmap_service_ids]
    assert all(s == sets[0] for s in sets)
    return sets[0]


@pytest.fixture
def cluster(aws: FleetBuilder) -> str:
    return aws.create_cluster("prod")


def healthy_service(aws: FleetBuilder, name: str, count: int = 4, **kwargs: Any) -> SeededService:
    kwargs.setdefault("discovery_names", [name])
    service = aws.create_service("prod", name, **kwargs)
    for arn in aws.start_tasks(service, count):
        aws.set_health(arn, "HEALTHY")
    return service


# -- fail-open ----------------------------------------------------------------------------------
def test_when_every_task_is_unhealthy_nothing_is_removed_and_fail_open_is_reported(
    aws: FleetBuilder, cluster: str, lambda_context: FakeLambdaContext, read_output: Any
) -> None:
    orders = healthy_service(aws, "orders")
    payments = healthy_service(aws, "payments")
    for arn in orders.task_arns:
        aws.set_health(arn, "UNHEALTHY")  # a shared dependency is down
    aws.set_health(payments.task_arns[0], "UNHEALTHY")

    poll(lambda_context)

    assert registered(aws, orders) == task_ids(*orders.task_arns)
    assert registered(aws, payments) == task_ids(*payments.task_arns[1:])  # the other service is unaffected
    output = read_output()
    assert output.metrics.value("FailOpenActivated") == 1
    assert output.metrics.value("UnhealthyTasksFound") == 5
    assert output.metrics.value("TasksDeregistered", Reason="Unhealthy") == 1
    held = next(r for r in output.logs if r["message"].startswith("Fail-open"))
    assert (held["ecs_service"], held["running_tasks"], held["unhealthy_tasks"]) == ("orders", 4, 4)


@pytest.mark.parametrize(("unhealthy", "min_percent", "removed"), [(2, "50", 2), (3, "50", 0), (3, "25", 3)])
def test_min_healthy_percent(
    aws: FleetBuilder,
    cluster: str,
    env: pytest.MonkeyPatch,
    lambda_context: FakeLambdaContext,
    unhealthy: int,
    min_percent: str,
    removed: int,
) -> None:
    env.setenv("MIN_HEALTHY_PERCENT", min_percent)
    orders = healthy_service(aws, "orders")
    for arn in orders.task_arns[:unhealthy]:
        aws.set_health(arn, "UNHEALTHY")

    poll(lambda_context)

    assert len(task_ids(*orders.task_arns) - registered(aws, orders)) == removed


def test_stopping_tasks_leave_even_when_the_rest_of_the_service_is_unhealthy(
    aws: FleetBuilder, cluster: str, lambda_context: FakeLambdaContext
) -> None:
    orders = healthy_service(aws, "orders", count=2)
    for arn in orders.task_arns:
        aws.set_health(arn, "UNHEALTHY")
    aws.begin_stopping(orders.task_arns[0])

    stop(orders, orders.task_arns[0], lambda_context)

    assert registered(aws, orders) == task_ids(orders.task_arns[1])


# -- scope by tag -------------------------------------------------------------------------------
def test_ignored_service_is_left_alone_by_both_functions(
    aws: FleetBuilder, cluster: str, lambda_context: FakeLambdaContext, read_output: Any
) -> None:
    ignored = healthy_service(aws, "legacy", tags={"cloudmap-reactor:ignore": "true"})
    aws.set_health(ignored.task_arns[0], "UNHEALTHY")

    assert stop(ignored, ignored.task_arns[1], lambda_context)["status"] == "ignored"
    poll(lambda_context)

    assert registered(aws, ignored) == task_ids(*ignored.task_arns)
    assert read_output().metrics.value("TasksDeregistered") == 0


def test_opt_in_mode_looks_after_enabled_services_only(
    aws: FleetBuilder, cluster: str, env: pytest.MonkeyPatch, lambda_context: FakeLambdaContext
) -> None:
    env.setenv("TAG_SCOPE", "opt-in")
    enabled = healthy_service(aws, "orders", tags={"cloudmap-reactor:enabled": "true"})
    untagged = healthy_service(aws, "payments")
    for service in (enabled, untagged):
        aws.set_health(service.task_arns[0], "UNHEALTHY")

    poll(lambda_context)
    stop(untagged, untagged.task_arns[1], lambda_context)
    stop(enabled, enabled.task_arns[1], lambda_context)

    assert registered(aws, enabled) == task_ids(*enabled.task_arns[2:])
    assert registered(aws, untagged) == task_ids(*untagged.task_arns)


# -- classic service discovery ------------------------------------------------------------------
def test_service_discovery_registries_are_handled_like_service_connect(
    aws: FleetBuilder, cluster: str, lambda_context: FakeLambdaContext, read_output: Any
) -> None:
    classic = healthy_service(aws, "billing", discovery_names=[], registry_names=["billing"])
    aws.set_health(classic.task_arns[0], "UNHEALTHY")

    poll(lambda_context)
    stop(classic, classic.task_arns[1], lambda_context)

    assert registered(aws, classic) == task_ids(*classic.task_arns[2:])
    output = read_output()
    assert output.metrics.value("TasksDeregistered", Reason="Unhealthy") == 1
    assert output.metrics.value("TasksDeregistered", Reason="TaskStopping") == 1


# -- reconciliation -----------------------------------------------------------------------------
def test_reconciliation_removes_instances_of_stopped_tasks_and_only_counts_unknown_ones(
    aws: FleetBuilder, cluster: str, lambda_context: FakeLambdaContext, read_output: Any
) -> None:
    """A stop event was missed (Lambda error, DLQ): the next pass catches up."""
    orders = healthy_service(aws, "orders", discovery_names=["orders", "orders-grpc"])
    stopped = orders.task_arns[0]
    aws.ecs.stop_task(cluster=orders.cluster_arn, task=stopped, reason="Scaling activity")
    unknown_task = "0123456789abcdef0123456789abcdef"
    for sid in orders.cloudmap_service_ids:
        aws.cloudmap.register_instance(
            ServiceId=sid, InstanceId=unknown_task, Attributes={"AWS_INSTANCE_IPV4": "10.9.9.9"}
        )
    aws.cloudmap.register_instance(
        ServiceId=orders.cloudmap_service_ids[0],
        InstanceId="manual",
        Attributes={"AWS_INSTANCE_IPV4": "10.9.9.8"},
    )

    poll(lambda_context)

    assert aws.instance_ids(orders.cloudmap_service_ids[0]) == task_ids(*orders.task_arns[1:]) | {
        unknown_task,
        "manual",
    }
    assert aws.instance_ids(orders.cloudmap_service_ids[1]) == task_ids(*orders.task_arns[1:]) | {unknown_task}
    output = read_output()
    assert output.metrics.value("TasksDeregistered", Reason="Reconciled") == 2
    assert output.metrics.value("OrphanInstances") == 3
    assert {r["instance_id"] for r in output.logs if r["message"].startswith("Cloud Map instance matches no")} == {
        unknown_task,
        "manual",
    }


def test_dry_run_changes_nothing_anywhere(
    aws: FleetBuilder, cluster: str, env: pytest.MonkeyPatch, lambda_context: FakeLambdaContext, read_output: Any
) -> None:
    env.setenv("DRY_RUN", "true")
    orders = healthy_service(aws, "orders")
    aws.set_health(orders.task_arns[0], "UNHEALTHY")
    aws.ecs.stop_task(cluster=orders.cluster_arn, task=orders.task_arns[1], reason="Scaling activity")

    poll(lambda_context)
    stop(orders, orders.task_arns[2], lambda_context)

    assert registered(aws, orders) == task_ids(*orders.task_arns)
    output = read_output()
    assert output.metrics.value("TasksDeregistered") == 0
    for reason in ("Unhealthy", "Reconciled", "TaskStopping"):
        assert output.metrics.value("DryRunDeregistrations", Reason=reason) == 1, reason


# -- load ---------------------------------------------------------------------------------------
def test_500_stop_events_from_parallel_threads_all_land(
    aws: FleetBuilder, cluster: str, lambda_context: FakeLambdaContext, read_output: Any
) -> None:
    services = [aws.create_service("prod", f"svc-{i:02d}", discovery_names=[f"svc-{i:02d}"]) for i in range(10)]
    for service in services:
        aws.start_tasks(service, 50)
    events = [(s, arn) for s in services for arn in s.task_arns]
    assert len(events) == 500

    with ThreadPoolExecutor(max_workers=16) as pool:
        results = list(pool.map(lambda pair: stop(pair[0], pair[1], lambda_context), events))

    assert all(r["status"] == "processed" for r in results)
    assert all(not registered(aws, s) for s in services)
    output = read_output()
    assert output.metrics.value("TasksDeregistered", Reason="TaskStopping") == 500
    assert output.metrics.value("DeregistrationErrors") == 0
