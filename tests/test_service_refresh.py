"""Service views kept over warm invocations and refreshed in slices, counted against the emulator.

A cold container lists and describes every service of a cluster once (it knows nothing about
them); after that each pass spends at most ``Policy.service_refresh_reads`` ECS reads on them:
a refresh cycle lists the services, then describes them 10 a call, never-described first, then
the oldest. Here the slice is 2 reads (``SERVICE_REFRESH_SHARE`` 0.02 of 10 reads/s x 10 s) and
the cluster has 46 services (1 ``ListServices`` page, 5 ``DescribeServices``), so a cycle takes
3 passes: the listing and 10 services, 20, 16.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest
from moto.ecs import models as ecs_models

from cloudmap_reactor import wiring
from cloudmap_reactor.adapters.clients import ecs_client
from cloudmap_reactor.adapters.deadline import DeadlineExceeded
from cloudmap_reactor.config import Policy
from cloudmap_reactor.core.model import EcsService
from cloudmap_reactor.poller.memory import ClusterView
from cloudmap_reactor.poller.reading import refresh_cycle_passes
from devtools.aws_emulator import FleetBuilder, SeededService
from devtools.local_lambda import FakeLambdaContext
from tests.conftest import FakeTime, poll, task_ids
from tests.test_pass_cost import PassCalls

SLICE = 2  # ECS reads per pass for refreshing services
SERVICES = 46  # 5 api-*, 40 worker-*, and the one each test adds (or ``spare``)
CYCLE = refresh_cycle_passes(SERVICES, SLICE)  # the listing and 10 services, 20, 16: 3 passes
SERVICE_READS = ("ListServices", "DescribeServices")


@pytest.fixture
def sliced(window: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """Three passes per invocation; a new cycle as soon as the last ended; reconciled on each first pass.

    No read budget (counts, not waits): the share is then of 10 reads/s.
    """
    window.setenv("SERVICE_REFRESH_PASSES", "1")
    window.setenv("SERVICE_REFRESH_SHARE", "0.02")
    return window


def fleet(aws: FleetBuilder, env: pytest.MonkeyPatch, *, spare: bool = True) -> list[SeededService]:
    """5 Service Connect services of 4 tasks (20 tasks: one DescribeTasks), 40 workers Cloud Map never sees."""
    env.setenv("CLUSTER_ARNS", aws.create_cluster("big"))
    wiring.reset()  # importing the handler (fake_time) read the environment already
    api = [aws.create_service("big", f"api-{i}", discovery_names=[f"api-{i}"]) for i in range(5)]
    for service in api:
        aws.start_tasks(service, 4)
    for i in range(40):
        aws.create_service("big", f"worker-{i:02}")
    if spare:
        aws.create_service("big", "spare")
    return api


class Passes(PassCalls):
    """PassCalls over several invocations of one container, running ``watch(n)`` after pass n (from 1) ends."""

    def __init__(self, fake_time: FakeTime, watch: Callable[[int], None] = lambda n: None) -> None:
        super().__init__(fake_time)
        self.watch = watch
        fake_time.on_sleep = self._ended

    def _ended(self) -> None:
        self._end_of_pass()
        self.watch(len(self.passes))

    def poll(self, context: FakeLambdaContext, invocations: int = 1) -> None:
        for _ in range(invocations):
            result = poll(context)
            assert result["passes"] == 3
            self.finish()  # the invocation's last pass: no sleep follows it
            self.list_tasks.append([])
            self.describe_sizes.append([])
            self.watch(len(self.passes))


def service_reads(counts: object) -> int:
    return sum(counts[op] for op in SERVICE_READS)  # type: ignore[index]


def test_the_slice_is_a_share_of_the_passs_read_budget(sliced: pytest.MonkeyPatch) -> None:
    assert Policy.from_env().service_refresh_reads == SLICE
    assert CYCLE == 3
    assert refresh_cycle_passes(2_500, 20) == 14  # 25 pages and 10 services, then 200 a pass
    assert refresh_cycle_passes(60, 20, every=6) == 6  # small clusters: every SERVICE_REFRESH_PASSES
    assert Policy().service_refresh_reads == 20  # 0.2 of 10 reads/s x 10 s
    assert Policy(ecs_reads_per_second=2, service_refresh_share=0.01).service_refresh_reads == 1  # never 0


def test_a_warm_invocation_reads_its_slice_of_services_and_a_cold_one_reads_them_all(
    aws: FleetBuilder, sliced: pytest.MonkeyPatch, lambda_context: FakeLambdaContext, fake_time: FakeTime
) -> None:
    fleet(aws, sliced)
    calls = Passes(fake_time)

    calls.poll(lambda_context, invocations=2)  # the same (warm) container

    cold, *warm = calls.passes
    assert (cold["ListServices"], cold["DescribeServices"]) == (1, math.ceil(SERVICES / 10))
    for counts in warm:  # the floor (20 tasks: one DescribeTasks) and the slice, nothing else
        assert counts["DescribeTasks"] == 1
        assert PassCalls.ecs_reads(counts) == 1 + service_reads(counts) == 1 + SLICE
    # The cycles go on through the second invocation: its first pass (4) describes 16, not 46.
    assert [c["ListServices"] for c in calls.passes] == [1, 1, 0, 0, 1, 0]  # a listing every CYCLE passes
    assert [sum(calls.describe_sizes[n]) for n in range(6)] == [20] * 6  # the tasks: 20 every pass

    wiring.reset()  # a new container knows nothing: it describes every service once
    calls = Passes(fake_time)
    calls.poll(lambda_context)
    cold, *warm = calls.passes
    assert (cold["ListServices"], cold["DescribeServices"]) == (1, math.ceil(SERVICES / 10))
    assert all(service_reads(c) <= SLICE for c in warm)


def test_a_new_services_unhealthy_task_is_found_within_one_cycle(
    aws: FleetBuilder, sliced: pytest.MonkeyPatch, lambda_context: FakeLambdaContext, fake_time: FakeTime
) -> None:
    """Created right after a cycle's listing (pass 2): listed by the next cycle (pass 2 + CYCLE), described first."""
    fleet(aws, sliced, spare=False)
    created: list[SeededService] = []
    gone_after: list[int] = []

    def watch(n: int) -> None:
        if n == 2:
            created.append(aws.create_service("big", "search", discovery_names=["search"]))
            aws.set_health(aws.start_tasks(created[0], 2)[0], "UNHEALTHY")
        elif (
            created
            and not gone_after
            and aws.instance_ids(created[0].cloudmap_service_ids[0]) == task_ids(created[0].task_arns[1])
        ):
            gone_after.append(n)

    Passes(fake_time, watch).poll(lambda_context, invocations=2)

    assert gone_after == [2 + CYCLE]


def turn_on_service_connect(aws: FleetBuilder) -> Callable[[], SeededService]:
    """``zz-late`` runs without Service Connect; the change turns it on (its tasks get registered)."""
    late = aws.create_service("big", "zz-late")
    aws.start_tasks(late, 2)

    def change() -> SeededService:
        aws.turn_on_service_connect(late, ["late"])
        return late

    return change


def untag_ignore(aws: FleetBuilder) -> Callable[[], SeededService]:
    """``zz-quiet`` is registered but ignored (tag); the change removes the tag."""
    quiet = aws.create_service("big", "zz-quiet", discovery_names=["quiet"], tags={"cloudmap-reactor:ignore": "true"})
    aws.start_tasks(quiet, 2)

    def change() -> SeededService:
        aws.ecs.untag_resource(resourceArn=quiet.arn, tagKeys=["cloudmap-reactor:ignore"])
        return quiet

    return change


@pytest.mark.parametrize("seed", [turn_on_service_connect, untag_ignore])
def test_a_change_of_a_service_is_seen_within_one_cycle(
    aws: FleetBuilder,
    sliced: pytest.MonkeyPatch,
    lambda_context: FakeLambdaContext,
    fake_time: FakeTime,
    seed: Callable[[FleetBuilder], Callable[[], SeededService]],
) -> None:
    """After pass 1 the service changes and its first task turns UNHEALTHY.

    Named ``zz-…``, it is described in the last slice of the cycle of passes 2-4, and not before:
    a pass has nothing to confirm for a service it does not manage.
    """
    fleet(aws, sliced, spare=False)
    change = seed(aws)
    changed: list[SeededService] = []
    seen: list[int] = []

    def watch(n: int) -> None:
        if n == 1:
            changed.append(change())
            aws.set_health(changed[0].task_arns[0], "UNHEALTHY")
        elif not seen and aws.instance_ids(changed[0].cloudmap_service_ids[0]) == task_ids(changed[0].task_arns[1]):
            seen.append(n)

    Passes(fake_time, watch).poll(lambda_context, invocations=2)

    assert seen == [1 + CYCLE]


def test_a_stale_view_never_takes_a_task_out_of_a_service_now_ignored(
    aws: FleetBuilder, sliced: pytest.MonkeyPatch, lambda_context: FakeLambdaContext, fake_time: FakeTime
) -> None:
    """Tagged ignore after pass 1, and one of its tasks turns UNHEALTHY at once.

    The slice of pass 2 does not reach ``zz-api``, but before taking the task out the pass
    describes ``zz-api`` again, sees the tag, and leaves it alone.
    """
    fleet(aws, sliced, spare=False)
    api = aws.create_service("big", "zz-api", discovery_names=["zz-api"])
    sick, well = aws.start_tasks(api, 2)
    described: list[list[str]] = [[]]

    def names(params: dict[str, Any], model: Any, **_: Any) -> None:
        if model.name == "DescribeServices":
            described[-1].extend(params["services"])

    def watch(n: int) -> None:
        described.append([])
        if n == 1:
            aws.ecs.tag_resource(resourceArn=api.arn, tags=[{"key": "cloudmap-reactor:ignore", "value": "true"}])
            aws.set_health(sick, "UNHEALTHY")

    calls = Passes(fake_time, watch)
    ecs_client().meta.events.register("provide-client-params.ecs", names)
    calls.poll(lambda_context)

    assert aws.instance_ids(api.cloudmap_service_ids[0]) == task_ids(sick, well)
    assert described[1][-1:] == ["zz-api"]  # not in pass 2's slice: described alone, before acting
    assert calls.passes[1]["DescribeServices"] == SLICE  # the slice's one call (after the listing), and that one


def test_a_deleted_service_is_dropped_at_the_next_listing(
    aws: FleetBuilder, sliced: pytest.MonkeyPatch, lambda_context: FakeLambdaContext, fake_time: FakeTime
) -> None:
    fleet(aws, sliced)

    def watch(n: int) -> None:
        if n == 1:
            aws.ecs.delete_service(cluster="big", service="spare", force=True)

    Passes(fake_time, watch).poll(lambda_context)

    view = next(iter(wiring.poller_deps().reader.memory.views.values()))
    assert "spare" not in view.services
    assert len(view.described()) == SERVICES - 1


def test_a_view_describes_urgent_then_new_then_oldest_services_and_drops_what_is_no_longer_listed() -> None:
    def service(name: str) -> EcsService:
        return EcsService(cluster_arn="c", service_name=name, service_arn=f"arn/{name}")

    view = ClusterView({})
    view.relist(["a", "b", "c"], 1)
    assert view.due() == ["a", "b", "c"]
    view.update(["a", "b", "c"], [service("a"), service("b")], 1)  # ECS no longer knows c
    assert view.due() == []
    assert set(view.described()) == {"a", "b"}
    view.update(["b"], [service("b")], 2)
    view.relist(["a", "b", "d"], 3)  # c deleted, d new
    assert view.due() == ["d", "a", "b"]  # never described, then the oldest
    view.urgent.add("b")  # a client just redeployed
    assert view.due() == ["b", "d", "a"]
    view.update(["b", "d"], [service("b"), replace(service("d"), active=False)], 3)  # d deleted (INACTIVE)
    assert view.due() == ["a"]
    assert set(view.described()) == {"a", "b"}
    assert view.fresh(3) == {"b"}


def test_a_slice_that_cannot_be_described_is_reported_and_the_pass_goes_on_with_the_older_view(
    aws: FleetBuilder,
    sliced: pytest.MonkeyPatch,
    lambda_context: FakeLambdaContext,
    fake_time: FakeTime,
    mocker: Any,
    read_output: Any,
) -> None:
    """From pass 2 on, ECS fails to describe ``zz-bad`` (last slice of the cycle, pass 4).

    Pass 4 is read and acted on with the older view (an UNHEALTHY task of ``api-0`` leaves), the
    failed call is logged, and the cycle is not stuck: the next one starts on pass 5 and asks
    for ``zz-bad`` and the 9 services of its call again, first (the oldest views), on pass 6.
    """
    api = fleet(aws, sliced, spare=False)
    aws.create_service("big", "zz-bad")
    backend = ecs_models.EC2ContainerServiceBackend
    original = backend.describe_services

    def failing(self: Any, cluster_str: str, names: list[str]) -> Any:
        services, failures = original(self, cluster_str, names)
        bad = [s for s in services if s.name == "zz-bad"]
        failures += [{"arn": s.arn, "reason": "INTERNAL"} for s in bad]
        return [s for s in services if s not in bad], failures

    def watch(n: int) -> None:
        if n == 1:
            mocker.patch.object(backend, "describe_services", failing)
        if n == 3:
            aws.set_health(api[0].task_arns[0], "UNHEALTHY")

    calls = Passes(fake_time, watch)
    calls.poll(lambda_context, invocations=2)

    assert aws.instance_ids(api[0].cloudmap_service_ids[0]) == task_ids(*api[0].task_arns[1:])  # on pass 4
    errors = [m for m in read_output().messages("ERROR") if "Could not reconcile" in m]
    assert len(errors) == 2  # on passes 4 and 6: one call of 10 services each time
    assert [c["ListServices"] for c in calls.passes] == [1, 1, 0, 0, 1, 0]


def test_a_cold_cluster_that_cannot_be_described_in_one_pass_is_warmed_up_over_passes_not_from_scratch(
    aws: FleetBuilder, env: pytest.MonkeyPatch, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cold container's first pass runs out of time after one DescribeServices call (2,500 services at 10 reads/s).

    What it described is kept and acted on (api-0's UNHEALTHY task leaves at once); the next pass
    describes the rest instead of listing and describing the cluster again from nothing.
    """
    api = fleet(aws, env)
    sick = api[0].task_arns[0]
    aws.set_health(sick, "UNHEALTHY")
    fleet_reader = wiring.poller_deps().reader._fleet
    real = fleet_reader.describe_services
    calls: list[int] = []
    out_of_time = [True]

    def describe(cluster_arn: str, names: Any) -> list[EcsService]:
        calls.append(len(names))
        if out_of_time[0] and len(calls) > 1:
            raise DeadlineExceeded("DescribeServices: the deadline has passed")
        return real(cluster_arn, names)

    monkeypatch.setattr(fleet_reader, "describe_services", describe)
    scanner = wiring.poller_deps().new_scanner(owner="cold")

    first = scanner.run_pass(deadline=time.monotonic() + 60)
    assert first.clusters_scanned == 1  # read, not skipped
    assert not first.skipped_clusters
    assert [d.task_arn for d in first.deregistrations] == [sick]  # api-0 was in the first call
    assert any("warming up after a cold start: 10 of 46 services" in f.error for f in first.read_failures)
    assert not first.complete  # part of the cluster is not looked after yet: no heartbeat

    out_of_time[0] = False
    calls.clear()
    second = scanner.run_pass(deadline=time.monotonic() + 60)
    assert sum(calls) == SERVICES - 10  # the rest, not the whole cluster again
    assert not [f for f in second.read_failures if "warming up" in f.error]
    assert second.complete
    assert aws.instance_ids(api[0].cloudmap_service_ids[0]) == task_ids(*api[0].task_arns[1:])
