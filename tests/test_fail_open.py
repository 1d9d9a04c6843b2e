"""The fail-open guard has no way around it: per Cloud Map service, on what is registered, at act time.

Each test is one way an earlier guard could be walked around until a Cloud Map service whose tasks
still run was empty; each asserts on the number of instances still registered.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from cloudmap_reactor.adapters.clients import ecs_client
from cloudmap_reactor.handlers import task_state_change
from devtools.aws_emulator import FleetBuilder
from devtools.http_targets import Behaviour, LocalHttpTargets, local_http_targets
from devtools.local_lambda import FakeLambdaContext
from tests.conftest import poll, task_event, task_ids


@pytest.fixture
def http() -> Iterator[LocalHttpTargets]:
    with local_http_targets() as targets:
        yield targets


def test_probe_failures_one_invocation_after_another_never_empty_the_service(
    aws: FleetBuilder, http: LocalHttpTargets, env: pytest.MonkeyPatch, lambda_context: FakeLambdaContext
) -> None:
    """(a) An instance taken out earlier is not probed any more; it must not count as healthy capacity."""
    for name, value in {"HTTP_PROBES": "true", "PROBE_FAILURE_THRESHOLD": "1", "RECONCILE_EVERY_PASSES": "0"}.items():
        env.setenv(name, value)
    env.setenv("PROBE_CONNECT_TIMEOUT_SECONDS", "0.2")
    env.setenv("PROBE_READ_TIMEOUT_SECONDS", "0.3")
    aws.create_cluster("prod")
    service = aws.create_service(
        "prod", "orders", discovery_names=["orders"], tags={"cloudmap-reactor:http-check": "/healthz"}
    )
    servers = [http.add(Behaviour.HEALTHY) for _ in range(4)]
    aws.start_tasks(service, 4, addresses=[s.address for s in servers])
    sid = service.cloudmap_service_ids[0]

    registered_after = []
    for index in range(3):  # one more task fails in each invocation
        servers[index].behaviour = Behaviour.FAILING
        poll(lambda_context)
        registered_after.append(len(aws.instance_ids(sid)))

    assert registered_after == [3, 2, 2]  # the third would leave 1 of 4 running tasks: held
    assert aws.instance_ids(sid) == task_ids(*service.task_arns[2:])


def test_tasks_whose_instance_is_already_gone_are_not_counted_as_serving(
    aws: FleetBuilder, lambda_context: FakeLambdaContext
) -> None:
    """(b) Two of four instances are missing (never registered, or removed by hand): one more UNHEALTHY is held."""
    aws.create_cluster("prod")
    service = aws.create_service("prod", "orders", discovery_names=["orders"])
    arns = aws.start_tasks(service, 4)
    sid = service.cloudmap_service_ids[0]
    for arn in arns:
        aws.set_health(arn, "HEALTHY")
    for arn in arns[:2]:
        aws.cloudmap.deregister_instance(ServiceId=sid, InstanceId=task_ids(arn).pop())
    aws.set_health(arns[2], "UNHEALTHY")

    poll(lambda_context)

    assert aws.instance_ids(sid) == task_ids(arns[2], arns[3])


def test_two_ecs_services_sharing_one_cloudmap_service_are_guarded_as_one(
    aws: FleetBuilder, lambda_context: FakeLambdaContext
) -> None:
    """(c) Blue/green: each ECS service alone would pass its own guard; together they would empty the name."""
    aws.create_cluster("prod")
    blue = aws.create_service("prod", "blue", registry_names=["web"])
    sid = blue.cloudmap_service_ids[0]
    green = aws.create_service("prod", "green", shared_registry_ids=[sid])
    for service, healths in (
        (blue, ["UNHEALTHY", "HEALTHY"]),
        (green, ["UNHEALTHY", "UNHEALTHY", "HEALTHY", "HEALTHY"]),
    ):
        for arn, health in zip(aws.start_tasks(service, len(healths)), healths, strict=True):
            aws.set_health(arn, health)
    # 6 running tasks in "web", 3 healthy: 50 % stay, exactly the minimum, so all three unhealthy leave
    poll(lambda_context)
    assert len(aws.instance_ids(sid)) == 3

    aws.set_health(green.task_arns[2], "UNHEALTHY")  # now 2 of 6 would stay: below 50 %
    poll(lambda_context)
    assert aws.instance_ids(sid) == task_ids(blue.task_arns[1], *green.task_arns[2:])


def test_a_removal_by_the_reactor_during_the_pass_is_counted_before_acting(
    aws: FleetBuilder, lambda_context: FakeLambdaContext
) -> None:
    """(d) The pass read three tasks; while it runs, the reactor takes a stopping one out. The guard sees it."""
    aws.create_cluster("prod")
    service = aws.create_service("prod", "orders", discovery_names=["orders"])
    arns = aws.start_tasks(service, 3)
    sid = service.cloudmap_service_ids[0]
    for arn, health in zip(arns, ["UNHEALTHY", "HEALTHY", "HEALTHY"], strict=True):
        aws.set_health(arn, health)
    stopping = arns[1]
    fired: list[str] = []

    def reactor_meanwhile(**_: Any) -> None:
        if not fired:  # once, right after the poller described the tasks (its snapshot)
            fired.append("stop event")
            event = task_event(stopping, service.cluster_arn, group="service:orders")
            assert task_state_change.lambda_handler(event, FakeLambdaContext())["status"] == "processed"

    ecs_client().meta.events.register("after-call.ecs.DescribeTasks", reactor_meanwhile)

    poll(lambda_context)

    assert fired
    # Without the re-read the poller would count the stopping task and take the unhealthy one out,
    # leaving a single instance; with it, 1 of 3 healthy is below 50 % and the guard holds.
    assert aws.instance_ids(sid) == task_ids(arns[0], arns[2])
