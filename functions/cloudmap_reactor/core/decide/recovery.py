"""The quarantine: an instance taken out while its task runs comes back when healthy, or is forgotten."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

from cloudmap_reactor.config import Policy
from cloudmap_reactor.core.decisions import (
    Action,
    ClusterSnapshot,
    Decision,
    Forget,
    Held,
    Hold,
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
    looks_like_task_id,
    task_id,
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
        if not is_consistent(record, managed[record.service_name]):
            decision.invalid_records.append(record)  # not one we wrote: never acted on
            continue
        task = by_id.get(record.instance_id)
        if task is not None and task.service_name != record.service_name:
            decision.invalid_records.append(record)
        elif task is None or is_leaving(task):
            actions.append(Forget(record))
        elif not is_running(task):
            continue
        elif _recovered(record, task, snapshot, policy):
            if policy.return_on_recovery:
                actions.append(Restore(record))
            else:
                decision.held.append(Held(Hold.RETURN_OFF, "RETURN_ON_RECOVERY=false", Restore(record)))
        elif _replaceable(record, snapshot.now, policy) and not {record.service_name} & replaced:
            if record.cloudmap_service_id in holding:
                continue  # never past the fail-open guard: a degraded service keeps what runs
            replaced.add(record.service_name)  # at most one task per service per pass
            actions.append(StopTask(replace(record, task_arn=task.task_arn)))  # the task ECS lists, not the stored ARN
    return actions


def is_consistent(record: QuarantineRecord, service: EcsService) -> bool:
    """A record names one of its service's Cloud Map services and its own task: ledger items are untrusted."""
    return (
        record.cloudmap_service_id in service.cloudmap_service_ids
        and looks_like_task_id(record.instance_id)
        and task_id(record.task_arn) == record.instance_id
    )


def _recovered(record: QuarantineRecord, task: TaskSnapshot, snapshot: ClusterSnapshot, policy: Policy) -> bool:
    """Healthy again by the measure it failed; if that measure no longer applies, by ECS alone.

    (A service whose HTTP check was removed, or whose probes are off, cannot pass a probe: its
    instances come back once ECS does not report them UNHEALTHY.)
    """
    if task.health_status == UNHEALTHY:
        return False
    if record.rule in (Rule.ECS_UNHEALTHY, Rule.NOT_READY_HEALTH):
        return task.health_status == HEALTHY
    if record.service_name not in snapshot.probed_services:
        return True
    streak = snapshot.probes.get(record.key, ProbeStreak())
    return streak.successes >= policy.probe_healthy_threshold


def _replaceable(record: QuarantineRecord, now: float, policy: Policy) -> bool:
    wait = policy.replace_after_seconds
    return wait > 0 and record.reason is Reason.PROBE_FAILED and now - record.since >= wait
