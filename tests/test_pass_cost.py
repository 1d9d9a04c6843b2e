"""What a poller pass costs in ECS reads and Cloud Map calls (issue #15), counted against the emulator.

The emulator pages like AWS (ListTasks and ListInstances 100 per page, DescribeTasks 100 tasks
per call), so these counts are the ones AWS would see. A pass needs ⌈T_rel/100⌉ DescribeTasks
(T_rel: the tasks of the in-scope Cloud Map services that can matter) and a listing of their ids:
in steady state Cloud Map's instance listings, which the pass reads anyway; on refresh and
reconciliation passes also ECS's own listing, the cheaper of the whole cluster and one per service.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

import pytest

from cloudmap_reactor.adapters.clients import cloudmap_client, ecs_client
from devtools.aws_emulator import FleetBuilder, SeededService
from devtools.local_lambda import FakeLambdaContext
from tests.conftest import FakeTime, count_calls, poll, task_ids

ECS_READS = ("ListClusters", "ListServices", "DescribeServices", "ListTasks", "DescribeTasks", "DescribeTaskDefinition")


class PassCalls:
    """The ECS and Cloud Map calls of each pass of one invocation, and the serviceName of each ListTasks."""

    def __init__(self, fake_time: FakeTime) -> None:
        self.ecs = count_calls(ecs_client())
        self.cloudmap = count_calls(cloudmap_client())
        self.passes: list[Counter[str]] = []
        self.list_tasks: list[list[str | None]] = [[]]
        self.describe_sizes: list[list[int]] = [[]]
        ecs_client().meta.events.register("provide-client-params.ecs", self._params)
        fake_time.on_sleep = self._end_of_pass  # the poller sleeps between passes

    def _params(self, params: dict[str, Any], model: Any, **_: Any) -> None:
        if model.name == "ListTasks":
            self.list_tasks[-1].append(params.get("serviceName"))
        elif model.name == "DescribeTasks":
            self.describe_sizes[-1].append(len(params["tasks"]))

    def _end_of_pass(self) -> None:
        self.passes.append(self.ecs.counts + self.cloudmap.counts)
        self.ecs.reset()
        self.cloudmap.reset()
        self.list_tasks.append([])
        self.describe_sizes.append([])

    def finish(self) -> None:
        """After the invocation: the last pass (no sleep follows it)."""
        if self.ecs.counts or self.cloudmap.counts:
            self._end_of_pass()
        del self.list_tasks[len(self.passes) :], self.describe_sizes[len(self.passes) :]

    @staticmethod
    def ecs_reads(counts: Counter[str]) -> int:
        return sum(counts[op] for op in ECS_READS)


def connect_services(
    aws: FleetBuilder, prefix: str, count: int, tasks: int, *, unregistered: int = 0
) -> list[SeededService]:
    """Service Connect services of ``tasks`` tasks each, the last ``unregistered`` of them not in Cloud Map."""
    services = [aws.create_service("big", f"{prefix}-{i}", discovery_names=[f"{prefix}-{i}"]) for i in range(count)]
    for service in services:
        aws.start_tasks(service, tasks - unregistered)
        aws.start_tasks(service, unregistered, register_in=[])
    return services


def test_a_mixed_cluster_lists_its_cloud_map_services_then_reads_only_their_tasks(
    aws: FleetBuilder, window: pytest.MonkeyPatch, lambda_context: FakeLambdaContext, fake_time: FakeTime
) -> None:
    """1,000 tasks, a tenth in Service Connect services, one task of each not registered (yet).

    ECS's listing, on the first pass: the whole cluster would cost 10 pages and 10 describes of
    tasks Cloud Map does not hold; the 10 services short of their runningCount, 10 pages and 1.
    """
    aws.create_cluster("big")
    connected = connect_services(aws, "api", 10, 10, unregistered=1)
    for i in range(3):  # workers, batch: Cloud Map never sees them
        aws.start_tasks(aws.create_service("big", f"worker-{i}", health_check=i > 0), 300)
    calls = PassCalls(fake_time)

    result = poll(lambda_context)
    calls.finish()

    assert result["passes"] == len(calls.passes) >= 3
    first, *steady = calls.passes
    assert sorted(calls.list_tasks[0], key=str) == sorted(s.name for s in connected)
    assert calls.describe_sizes[0] == [90, 10]  # what Cloud Map holds, then what only ECS listed
    assert first["ListInstances"] == 10
    floor = math.ceil(100 / 100)
    for counts, sizes, listed in zip(steady, calls.describe_sizes[1:], calls.list_tasks[1:], strict=True):
        assert PassCalls.ecs_reads(counts) == counts["DescribeTasks"] == floor
        assert sizes == [100]
        assert listed == []
        assert counts["ListInstances"] == 10  # where the task ids come from: one page per Cloud Map service
    assert result["tasks_examined"] == 100 * result["passes"]


def test_a_service_connect_cluster_is_listed_whole_once_then_reads_the_floor(
    aws: FleetBuilder, window: pytest.MonkeyPatch, lambda_context: FakeLambdaContext, fake_time: FakeTime
) -> None:
    """250 tasks in 5 Service Connect services, one of each not registered (yet).

    ECS's listing, on the first pass: the whole cluster (3 pages and 1 describe of the 5 tasks
    Cloud Map does not hold) is cheaper than 5 listings and 1 describe.
    """
    aws.create_cluster("big")
    connect_services(aws, "api", 5, 50, unregistered=1)
    calls = PassCalls(fake_time)

    result = poll(lambda_context)
    calls.finish()

    first, *steady = calls.passes
    assert calls.list_tasks[0] == [None, None, None]  # three pages of the whole cluster
    assert sorted(calls.describe_sizes[0]) == [5, 45, 100, 100]
    assert first["DescribeTaskDefinition"] == 0  # Service Connect: the agent's health check, whatever the definition
    assert steady
    for counts, sizes in zip(steady, calls.describe_sizes[1:], strict=True):
        assert PassCalls.ecs_reads(counts) == counts["DescribeTasks"] == math.ceil(250 / 100)
        assert sorted(sizes) == [50, 100, 100]
        assert counts["ListInstances"] == 5
    assert result["tasks_examined"] == 250 * result["passes"]


def test_tasks_without_a_container_health_check_are_read_only_when_something_needs_them(
    aws: FleetBuilder, window: pytest.MonkeyPatch, lambda_context: FakeLambdaContext, fake_time: FakeTime
) -> None:
    """Classic discovery with no container health check: ECS reports its tasks UNKNOWN forever.

    They are read on the reconciliation pass, not on the others.
    """
    aws.create_cluster("big")
    checked = aws.create_service("big", "checked", discovery_names=["checked"])
    plain = aws.create_service("big", "plain", registry_names=["plain"], health_check=False)
    aws.start_tasks(checked, 3)
    aws.start_tasks(plain, 4)
    calls = PassCalls(fake_time)

    poll(lambda_context)
    calls.finish()

    first, *steady = calls.passes
    assert calls.list_tasks[0] == []  # every running task is registered: nothing for ECS to list
    assert calls.describe_sizes[0] == [7]  # reconciliation: every task of both
    assert first["DescribeTaskDefinition"] == 1  # the classic one (Service Connect tasks are always read)
    assert steady
    for counts, sizes in zip(steady, calls.describe_sizes[1:], strict=True):
        assert sizes == [3]
        assert counts["ListInstances"] == 1  # only the Cloud Map service of ``checked``
        assert counts["DescribeTaskDefinition"] == 0


def test_a_new_services_unhealthy_task_is_found_within_one_service_refresh(
    aws: FleetBuilder, window: pytest.MonkeyPatch, lambda_context: FakeLambdaContext, fake_time: FakeTime
) -> None:
    window.setenv("SERVICE_REFRESH_PASSES", "2")
    aws.create_cluster("big")
    connect_services(aws, "api", 1, 2)
    created: list[SeededService] = []
    calls = PassCalls(fake_time)
    end_of_pass = fake_time.on_sleep

    def new_service() -> None:  # after the first pass, a new Service Connect service starts its tasks
        end_of_pass()
        if not created:
            created.append(aws.create_service("big", "search", discovery_names=["search"]))
            aws.set_health(aws.start_tasks(created[0], 2)[0], "UNHEALTHY")

    fake_time.on_sleep = new_service

    result = poll(lambda_context)
    calls.finish()

    assert result["passes"] >= 3
    assert aws.instance_ids(created[0].cloudmap_service_ids[0]) == task_ids(created[0].task_arns[1])
    assert [c["ListServices"] for c in calls.passes[:3]] == [1, 0, 1]  # described again on the third pass


def test_a_start_order_client_is_read_only_while_an_endpoint_is_newer_than_its_deployment(
    aws: FleetBuilder, window: pytest.MonkeyPatch, lambda_context: FakeLambdaContext, fake_time: FakeTime
) -> None:
    aws.create_cluster("big")
    connect_services(aws, "mysql", 1, 1)
    client = aws.create_service(
        "big", "wordpress", service_connect=True, tags={"cloudmap-reactor:depends-on": "mysql-0"}
    )
    aws.start_tasks(client, 2)  # started after the endpoint existed: cannot be stale
    calls = PassCalls(fake_time)

    poll(lambda_context)
    calls.finish()

    assert all("wordpress" not in listed for listed in calls.list_tasks)
    assert all(sizes == [1] for sizes in calls.describe_sizes[1:] if sizes)  # mysql's one task, not the client's


def test_the_guard_still_counts_running_tasks_that_cloud_map_does_not_hold(
    aws: FleetBuilder,
    window: pytest.MonkeyPatch,
    lambda_context: FakeLambdaContext,
    fake_time: FakeTime,
    read_output: Any,
) -> None:
    """4 running tasks, 2 never registered; after the first pass one registered task turns UNHEALTHY.

    Half of the 4 must stay registered and healthy: removing it would leave 1, so it stays. The 2
    unregistered tasks were seen by the first pass's ECS listing and are still read on later passes.
    """
    aws.create_cluster("big")
    service = aws.create_service("big", "api", discovery_names=["api"])
    registered = aws.start_tasks(service, 2)
    aws.start_tasks(service, 2, register_in=[])
    calls = PassCalls(fake_time)
    end_of_pass = fake_time.on_sleep

    def sicken() -> None:
        end_of_pass()
        aws.set_health(registered[0], "UNHEALTHY")

    fake_time.on_sleep = sicken

    result = poll(lambda_context)
    calls.finish()

    assert result["passes"] >= 2
    assert aws.instance_ids(service.cloudmap_service_ids[0]) == task_ids(*registered)
    assert read_output().metrics.value("FailOpenActivated") == result["passes"] - 1
    assert calls.describe_sizes[0] == [2, 2]  # registered, then listed by ECS
    assert all(sizes == [4] for sizes in calls.describe_sizes[1:])  # both, every later pass


def test_a_service_connect_task_turned_unhealthy_by_its_agent_is_found_on_every_pass(
    aws: FleetBuilder, window: pytest.MonkeyPatch, lambda_context: FakeLambdaContext, fake_time: FakeTime
) -> None:
    """No container health check in the task definition, but ECS's Service Connect agent has one.

    The agent is an essential container ECS adds to the task: when it fails its health check the
    task is UNHEALTHY, so Service Connect tasks are read on every pass, reconciliation or not.
    """
    window.setenv("RECONCILE_EVERY_PASSES", "0")
    aws.create_cluster("big")
    service = aws.create_service("big", "plain", discovery_names=["plain"], health_check=False)
    arns = aws.start_tasks(service, 4)
    aws.set_health(arns[0], "UNHEALTHY")

    poll(lambda_context)

    assert aws.instance_ids(service.cloudmap_service_ids[0]) == task_ids(*arns[1:])
