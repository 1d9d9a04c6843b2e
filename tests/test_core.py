"""The decisions, without AWS: which task leaves, what a dry run does, how the cache ages."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import pytest

from cloudmap_reactor.config import Policy
from cloudmap_reactor.core.decide import decide_cluster
from cloudmap_reactor.core.decisions import ClusterSnapshot, Decision, Deregister, Hold, Memory, ProbeStreak, Rule
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
from cloudmap_reactor.core.service_cache import CachedServiceLookup
from cloudmap_reactor.poller.acting import Actor

CLUSTER = "arn:aws:ecs:us-east-1:123456789012:cluster/prod"
ORDERS = EcsService(CLUSTER, "orders", f"{CLUSTER}/orders", frozenset({"srv-a", "srv-b"}))
PLAIN = EcsService(CLUSTER, "worker", f"{CLUSTER}/worker", frozenset())


def task(
    n: int, health: str, *, group: str = "service:orders", last: str = "RUNNING", desired: str = "RUNNING"
) -> TaskSnapshot:
    return TaskSnapshot(CLUSTER, f"arn:aws:ecs:us-east-1:123456789012:task/prod/{n:032x}", group, last, desired, health)


def decide(
    tasks: list[TaskSnapshot], *, removed: Sequence[TaskSnapshot] = (), min_percent: float = 50, dry_run: bool = False
) -> Decision:
    """One cluster's decision with every task registered in both of orders' Cloud Map services."""
    instances: dict[str, dict[str, dict[str, str]]] = {
        sid: {t.task_id: {} for t in tasks if t.task_id not in {r.task_id for r in removed}}
        for sid in ORDERS.cloudmap_service_ids
    }
    snapshot = ClusterSnapshot(CLUSTER, {"orders": ORDERS}, tuple(tasks), instances, fresh=frozenset(instances))
    memory = Memory(removed=frozenset((sid, t.task_id) for t in removed for sid in ORDERS.cloudmap_service_ids))
    return decide_cluster(snapshot, memory, Policy(min_healthy_percent=min_percent, dry_run=dry_run))


def removed_tasks(decision: Decision) -> set[str]:
    return {a.task_arn for a in decision.actions if isinstance(a, Deregister)}


def test_only_unhealthy_running_tasks_are_removed() -> None:
    tasks = [
        task(1, "UNHEALTHY"),
        task(2, "HEALTHY"),
        task(3, "UNKNOWN"),
        task(4, "UNHEALTHY", last="PENDING"),
        task(5, "UNHEALTHY", desired="STOPPED"),
        task(6, "HEALTHY"),
    ]
    decision = decide(tasks)
    assert removed_tasks(decision) == {tasks[0].task_arn}
    assert {(a.cloudmap_service_id, a.reason, a.rule) for a in decision.actions if isinstance(a, Deregister)} == {
        ("srv-a", Reason.UNHEALTHY, Rule.ECS_UNHEALTHY),
        ("srv-b", Reason.UNHEALTHY, Rule.ECS_UNHEALTHY),
    }
    assert {(v.running, v.failing, v.healthy_registered, v.holds) for v in decision.guard} == {(4, 1, 3, False)}


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
        (["UNHEALTHY", "HEALTHY", "HEALTHY"], 0, 50, 1, False),  # 2 of 3 stay, ceil(1.5) = 2 required
        (["UNHEALTHY", "UNHEALTHY", "HEALTHY"], 0, 1, 2, False),  # never fewer than one: 1 stays
    ],
)
def test_fail_open_guard(
    healths: list[str], removed_before: int, min_percent: float, removed_now: int, fail_open: bool
) -> None:
    tasks = [task(n, health) for n, health in enumerate(healths)]
    decision = decide(tasks, removed=tasks[:removed_before], min_percent=min_percent)
    assert len(removed_tasks(decision)) == removed_now
    assert bool(decision.fail_open) is fail_open
    assert not removed_tasks(decision) & {t.task_arn for t in tasks[:removed_before]}
    if fail_open:
        assert {h.why for h in decision.held} == {Hold.FAIL_OPEN}


def test_the_guard_counts_what_is_registered_not_what_runs() -> None:
    """Tasks whose instance is missing (never registered, or taken out by someone else) are not capacity."""
    tasks = [task(1, "UNHEALTHY"), task(2, "HEALTHY"), task(3, "HEALTHY"), task(4, "HEALTHY")]
    instances: dict[str, dict[str, dict[str, str]]] = {
        sid: {tasks[0].task_id: {}, tasks[1].task_id: {}} for sid in ORDERS.cloudmap_service_ids
    }
    snapshot = ClusterSnapshot(CLUSTER, {"orders": ORDERS}, tuple(tasks), instances, fresh=frozenset(instances))
    decision = decide_cluster(snapshot, Memory(), Policy())
    assert not decision.actions
    assert {(v.healthy_registered, v.required) for v in decision.fail_open} == {(1, 2)}


def test_without_the_instances_the_guard_asks_for_them_instead_of_guessing() -> None:
    tasks = [task(1, "UNHEALTHY"), task(2, "HEALTHY")]
    decision = decide_cluster(ClusterSnapshot(CLUSTER, {"orders": ORDERS}, tuple(tasks)), Memory(), Policy())
    assert not decision.actions
    assert decision.needs_listing == set(ORDERS.cloudmap_service_ids)


def test_two_ecs_services_sharing_one_cloudmap_service_are_guarded_together() -> None:
    """Blue/green: traffic is per Cloud Map service, so both services' tasks count in one guard."""
    blue = EcsService(CLUSTER, "blue", f"{CLUSTER}/blue", frozenset({"srv-a"}))
    green = EcsService(CLUSTER, "green", f"{CLUSTER}/green", frozenset({"srv-a"}))
    tasks = [task(1, "UNHEALTHY", group="service:blue"), task(2, "UNHEALTHY", group="service:blue")]
    tasks += [task(3, "UNHEALTHY", group="service:green"), task(4, "HEALTHY", group="service:green")]
    instances: dict[str, dict[str, dict[str, str]]] = {"srv-a": {t.task_id: {} for t in tasks}}
    snapshot = ClusterSnapshot(
        CLUSTER, {"blue": blue, "green": green}, tuple(tasks), instances, fresh=frozenset(instances)
    )
    decision = decide_cluster(snapshot, Memory(), Policy())
    assert not decision.actions  # per ECS service, blue alone would have looked "all unhealthy" and green 50 %
    assert [(v.service_names, v.running, v.healthy_registered) for v in decision.fail_open] == [
        (("blue", "green"), 4, 1)
    ]


def test_dry_run_holds_every_action_and_says_what_it_would_do() -> None:
    tasks = [task(1, "UNHEALTHY"), task(2, "HEALTHY"), task(3, "HEALTHY")]
    decision = decide(tasks, dry_run=True)
    assert not decision.actions
    assert {h.why for h in decision.held} == {Hold.DRY_RUN}
    assert {a.task_arn for a in decision.planned() if isinstance(a, Deregister)} == {tasks[0].task_arn}


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
    arn = task(1, "UNHEALTHY").task_arn
    actions = [
        Deregister(CLUSTER, "orders", arn, sid, Reason.UNHEALTHY, Rule.ECS_UNHEALTHY)
        for sid in ("srv-a", "srv-b", "srv-c")
    ]
    records = Actor(remover=remover).apply(Decision(actions=list(actions))).deregistrations
    assert [(r.cloudmap_service_id, r.outcome) for r in records] == [
        ("srv-a", Outcome.FAILED),
        ("srv-b", Outcome.DEREGISTERED),
        ("srv-c", Outcome.ALREADY_GONE),
    ]
    assert records[0].error == "throttled"
    assert all(r.instance_id == f"{1:032x}" for r in records)


def test_dry_run_never_calls_the_remover() -> None:
    remover = RecordingRemover()
    records = Actor(remover=remover).apply(decide([task(1, "UNHEALTHY"), task(2, "HEALTHY")], dry_run=True))
    assert remover.calls == []
    assert {r.outcome for r in records.deregistrations} == {Outcome.DRY_RUN}
    assert len(records.deregistrations) == 2


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


@pytest.mark.parametrize(
    ("ecs_unhealthy", "probe_failing", "removed", "fail_open"),
    [
        ([], [0], [0], False),  # 3 of 4 stay
        ([], [0, 1], [0, 1], False),  # exactly 50 %
        ([], [0, 1, 2], [], True),
        ([0], [1, 2], [], True),  # ECS health and probes count together
        ([0], [0], [0], False),  # both at once: one task
    ],
)
def test_fail_open_applies_to_probe_failures_as_to_ecs_health(
    ecs_unhealthy: list[int], probe_failing: list[int], removed: list[int], fail_open: bool
) -> None:
    web = EcsService(CLUSTER, "orders", f"{CLUSTER}/orders", frozenset({"srv-a"}))
    tasks = [task(n, "UNHEALTHY" if n in ecs_unhealthy else "UNKNOWN") for n in range(4)]
    instances: dict[str, dict[str, dict[str, str]]] = {"srv-a": {t.task_id: {} for t in tasks}}
    failures = {("srv-a", tasks[n].task_id): ProbeStreak(failures=3, passed=True) for n in probe_failing}
    snapshot = ClusterSnapshot(
        CLUSTER, {"orders": web}, tuple(tasks), instances, probes=failures, fresh=frozenset(instances)
    )
    decision = decide_cluster(snapshot, Memory(), Policy(probe_failure_threshold=3))
    assert sorted(removed_tasks(decision)) == sorted(tasks[n].task_arn for n in removed)
    assert bool(decision.fail_open) is fail_open
    reasons = {a.reason for a in decision.actions if isinstance(a, Deregister)}
    assert reasons <= {Reason.UNHEALTHY, Reason.PROBE_FAILED}
