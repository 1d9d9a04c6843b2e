"""The quarantine: an instance taken out while its task runs comes back when healthy, or is forgotten."""

from __future__ import annotations

from collections.abc import Mapping

from cloudmap_reactor.config import Policy
from cloudmap_reactor.core.decisions import (
    Action,
    ClusterSnapshot,
    Decision,
    Forget,
    Held,
    Hold,
    InstanceKey,
    ProbeStreak,
    QuarantineRecord,
    Restore,
    Rule,
    StopTask,
)
from cloudmap_reactor.core.model import (
    HEALTHY,
    UNHEALTHY,
    EcsService,
    Reason,
    TaskSnapshot,
    is_leaving,
    is_running,
)


def recover(
    snapshot: ClusterSnapshot, managed: Mapping[str, EcsService], policy: Policy, decision: Decision
) -> list[Action]:
    """Quarantined instances: back when healthy again, forgotten when their task leaves, replaced if asked.

    Only a task ECS lists as running and meant to run in this pass is ever registered again, with
    exactly the recorded id and attributes; a task that is stopping, stopped or unknown to ECS is
    never registered again: its record is deleted.
    """
    by_id = {t.task_id: t for t in snapshot.tasks}
    holding = {v.cloudmap_service_id for v in decision.guard if v.holds}
    replaced: set[str] = set()
    actions: list[Action] = []
    for record in snapshot.quarantined:
        if record.cluster_arn != snapshot.cluster_arn or record.service_name not in managed:
            continue  # another cluster's, or a service now out of scope: left as it is
        task = by_id.get(record.instance_id)
        if task is None or is_leaving(task):
            actions.append(Forget(record))
        elif not is_running(task):
            continue
        elif _recovered(record, task, snapshot.probes, policy):
            if policy.return_on_recovery:
                actions.append(Restore(record))
            else:
                decision.held.append(Held(Hold.RETURN_OFF, "RETURN_ON_RECOVERY=false", Restore(record)))
        elif _replaceable(record, snapshot.now, policy) and not {record.service_name} & replaced:
            if record.cloudmap_service_id in holding:
                continue  # never past the fail-open guard: a degraded service keeps what runs
            replaced.add(record.service_name)  # at most one task per service per pass
            actions.append(StopTask(record))
    return actions


def _recovered(
    record: QuarantineRecord, task: TaskSnapshot, probes: Mapping[InstanceKey, ProbeStreak], policy: Policy
) -> bool:
    if task.health_status == UNHEALTHY:
        return False
    if record.rule in (Rule.ECS_UNHEALTHY, Rule.NOT_READY_HEALTH):
        return task.health_status == HEALTHY
    streak = probes.get(record.key, ProbeStreak())
    return streak.successes >= policy.probe_healthy_threshold


def _replaceable(record: QuarantineRecord, now: float, policy: Policy) -> bool:
    wait = policy.replace_after_seconds
    return wait > 0 and record.reason is Reason.PROBE_FAILED and now - record.since >= wait
