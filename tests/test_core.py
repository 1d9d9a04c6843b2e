"""The decisions, without AWS: which task leaves, what a dry run does, how the cache ages."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import pytest

from cloudmap_reactor.core.deregistration import deregister_task
from cloudmap_reactor.core.model import (
    ENABLED_TAG,
    IGNORE_TAG,
    EcsService,
    Outcome,
    Reason,
    TagScope,
    TaskSnapshot,
    cloudmap_service_id,
    service_name_from_group,
)
from cloudmap_reactor.core.ports import AwsCallFailed, RemovalResult
from cloudmap_reactor.core.safety import plan_unhealthy_removals
from cloudmap_reactor.core.service_cache import CachedServiceLookup

CLUSTER = "arn:aws:ecs:us-east-1:123456789012:cluster/prod"
ORDERS = EcsService(CLUSTER, "orders", f"{CLUSTER}/orders", frozenset({"srv-a", "srv-b"}))
PLAIN = EcsService(CLUSTER, "worker", f"{CLUSTER}/worker", frozenset())


def task(
    n: int, health: str, *, group: str = "service:orders", last: str = "RUNNING", desired: str = "RUNNING"
) -> TaskSnapshot:
    return TaskSnapshot(CLUSTER, f"arn:aws:ecs:us-east-1:123456789012:task/prod/{n:032x}", group, last, desired, health)


def test_only_unhealthy_running_tasks_are_removed() -> None:
    tasks = [
        task(1, "UNHEALTHY"),
        task(2, "HEALTHY"),
        task(3, "UNKNOWN"),
        task(4, "UNHEALTHY", last="PENDING"),
        task(5, "UNHEALTHY", desired="STOPPED"),
        task(6, "HEALTHY"),
    ]
    plan = plan_unhealthy_removals(tasks, already_removed=set(), min_healthy_percent=50)
    assert [t.task_arn for t in plan.remove] == [tasks[0].task_arn]
    assert (plan.running, plan.unhealthy, plan.healthy_after, plan.fail_open) == (4, 1, 3, False)


@pytest.mark.parametrize(
    ("healths", "removed_before", "min_percent", "removed_now", "fail_open"),
    [
        (["UNHEALTHY", "UNHEALTHY", "HEALTHY", "HEALTHY"], 0, 50, 2, False),  # 2 of 4 stay: exactly 50 %
        (["UNHEALTHY", "UNHEALTHY", "UNHEALTHY", "HEALTHY"], 0, 50, 0, True),  # 1 of 4 would stay
        (["UNHEALTHY"] * 4, 0, 50, 0, True),  # a shared dependency is down: keep them all
        (["UNHEALTHY"], 0, 50, 0, True),  # the only task
        (["UNHEALTHY"] * 4, 0, 0, 4, False),  # guard switched off
        (["UNHEALTHY", "UNKNOWN", "UNKNOWN", "HEALTHY"], 0, 75, 1, False),  # UNKNOWN tasks serve traffic
        # two taken out on an earlier pass, a third now turns UNHEALTHY: 1 of 4 would stay
        (["UNHEALTHY", "UNHEALTHY", "UNHEALTHY", "HEALTHY"], 2, 50, 0, True),
        (["UNHEALTHY", "UNHEALTHY", "HEALTHY", "HEALTHY"], 2, 50, 0, False),  # nothing new to remove
    ],
)
def test_fail_open_guard(
    healths: list[str], removed_before: int, min_percent: float, removed_now: int, fail_open: bool
) -> None:
    tasks = [task(n, health) for n, health in enumerate(healths)]
    removed = {t.task_arn for t in tasks[:removed_before]}
    plan = plan_unhealthy_removals(tasks, already_removed=removed, min_healthy_percent=min_percent)
    assert len(plan.remove) == removed_now
    assert plan.fail_open is fail_open
    assert not {t.task_arn for t in plan.remove} & removed


def test_scope_by_tags() -> None:
    def service(**tags: str) -> EcsService:
        return EcsService(CLUSTER, "orders", f"{CLUSTER}/orders", frozenset({"srv-a"}), tuple(tags.items()))

    plain, ignored = service(), service(**{IGNORE_TAG: "true"})
    enabled, both = service(**{ENABLED_TAG: "TRUE"}), service(**{ENABLED_TAG: "true", IGNORE_TAG: "true"})
    assert [s.managed(TagScope.OPT_OUT) for s in (plain, ignored, enabled, both)] == [True, False, True, False]
    assert [s.managed(TagScope.OPT_IN) for s in (plain, ignored, enabled, both)] == [False, False, True, False]
    assert not PLAIN.managed(TagScope.OPT_OUT)  # not registered in Cloud Map


def test_helpers_reject_what_is_not_theirs() -> None:
    assert cloudmap_service_id("arn:aws:servicediscovery:us-east-1:123456789012:service/srv-abc123") == "srv-abc123"
    assert cloudmap_service_id("arn:aws:servicediscovery:us-east-1:123456789012:namespace/ns-abc") is None
    assert cloudmap_service_id("srv-abc") is None
    assert service_name_from_group("service:orders") == "orders"
    assert service_name_from_group("service:") is None
    assert service_name_from_group("family:orders") is None


@dataclass
class RecordingRemover:
    fail_for: set[str] = field(default_factory=set)
    gone: set[str] = field(default_factory=set)
    calls: list[tuple[str, str]] = field(default_factory=list)

    def deregister_instance(self, cloudmap_service_id: str, instance_id: str) -> RemovalResult:
        self.calls.append((cloudmap_service_id, instance_id))
        if cloudmap_service_id in self.fail_for:
            raise AwsCallFailed("throttled")
        return RemovalResult.ALREADY_GONE if cloudmap_service_id in self.gone else RemovalResult.REMOVED


def test_one_failing_cloudmap_service_does_not_stop_the_others() -> None:
    remover = RecordingRemover(fail_for={"srv-a"}, gone={"srv-c"})
    records = deregister_task(
        cluster_arn=CLUSTER,
        service_name="orders",
        task_arn=task(1, "UNHEALTHY").task_arn,
        cloudmap_service_ids={"srv-c", "srv-a", "srv-b"},
        reason=Reason.UNHEALTHY,
        remover=remover,
        dry_run=False,
    )
    assert [(r.cloudmap_service_id, r.outcome) for r in records] == [
        ("srv-a", Outcome.FAILED),
        ("srv-b", Outcome.DEREGISTERED),
        ("srv-c", Outcome.ALREADY_GONE),
    ]
    assert records[0].error == "throttled"
    assert all(r.instance_id == f"{1:032x}" for r in records)


def test_dry_run_never_calls_the_remover() -> None:
    remover = RecordingRemover()
    records = deregister_task(
        cluster_arn=CLUSTER,
        service_name="orders",
        task_arn=task(1, "UNHEALTHY").task_arn,
        cloudmap_service_ids=ORDERS.cloudmap_service_ids,
        reason=Reason.TASK_STOPPING,
        remover=remover,
        dry_run=True,
    )
    assert remover.calls == []
    assert {r.outcome for r in records} == {Outcome.DRY_RUN}


@dataclass
class CountingDirectory:
    calls: int = 0

    def describe_services(self, cluster_arn: str, service_names_or_arns: Sequence[str]) -> list[EcsService]:
        self.calls += 1
        return [ORDERS] if "orders" in service_names_or_arns else []


def test_cache_answers_within_its_ttl_and_asks_again_after() -> None:
    now = [100.0]
    directory = CountingDirectory()
    cache = CachedServiceLookup(directory, ttl_seconds=30, clock=lambda: now[0])

    assert cache.get(CLUSTER, "orders") == ORDERS
    now[0] += 29
    assert cache.get(CLUSTER, "orders") == ORDERS
    assert cache.get(CLUSTER, "gone") is None
    assert cache.get(CLUSTER, "gone") is None
    assert directory.calls == 2
    now[0] += 2
    cache.get(CLUSTER, "orders")
    assert directory.calls == 3
    assert cache.get("arn:aws:ecs:us-east-1:123456789012:cluster/other", "orders") == ORDERS
    assert directory.calls == 4
