"""Who leaves Cloud Map, and why: every rule of the reactor, the poller, ``plan`` and ``doctor``.

Pure functions (no AWS, no threads, no clock). The reactor calls ``stop_event_precheck`` and
``decide_stop_event``; the poller, ``plan`` and ``doctor`` call ``decide_cluster`` on what a pass
read. The rules, in the order a reader meets them:

* A task ECS has decided to stop leaves every Cloud Map service of its ECS service at once
  (``Rule.STOP_EVENT``); nothing holds that back but scope and dry run.
* A running task that ECS reports ``UNHEALTHY`` leaves every Cloud Map service of its service
  (``Rule.ECS_UNHEALTHY``); one that failed ``probe_failure_threshold`` HTTP probes in a row leaves
  the Cloud Map service it failed in (``Rule.PROBE_THRESHOLD``).
* The fail-open guard, per Cloud Map service (traffic is per Cloud Map service, and two ECS
  services can share one): health removals happen only if, after all of them, at least
  ``min_healthy_percent`` of the running tasks registered in it (rounded up, never fewer than one)
  stay registered and healthy; otherwise none of them happens. It counts what is registered,
  listed right before acting, so instances taken out earlier or meanwhile (by us or the reactor)
  or never registered are not capacity.
* Reconciliation: an instance whose task ECS is stopping or has stopped leaves (``Rule.RECONCILE``);
  one whose id matches no task ECS knows is only counted (an orphan), never removed.
* Start order: at most one stale client per cluster and pass is redeployed (``Rule.START_ORDER``).
* Only services in scope (cluster list, tags) and registered in Cloud Map are touched; a dry run
  holds every action back and says what it would have done.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping

from cloudmap_reactor.config import Policy
from cloudmap_reactor.core.decisions import (
    Action,
    ClusterSnapshot,
    Decision,
    Deregister,
    GuardVerdict,
    Held,
    Hold,
    InstanceKey,
    Memory,
    OrphanInstance,
    Redeploy,
    Rule,
    UnhealthyTask,
)
from cloudmap_reactor.core.model import EcsService, Reason, TaskSnapshot, service_name_from_group
from cloudmap_reactor.core.start_order import choose_redeployment, find_stale, start_order_clients

RUNNING = "RUNNING"
STOPPED = "STOPPED"
UNHEALTHY = "UNHEALTHY"
# lastStatus values of a task on its way out.
LEAVING = frozenset({"DEACTIVATING", "STOPPING", "DEPROVISIONING", "STOPPED", "DELETED"})
# What an ECS task id looks like (Cloud Map instance ids of ECS tasks are task ids).
_TASK_ID = re.compile(r"[0-9a-f]{32}|[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def is_running(task: TaskSnapshot) -> bool:
    """Running and meant to keep running: the only tasks that serve, and the only ones judged for health."""
    return task.last_status == RUNNING and task.desired_status == RUNNING


def is_leaving(task: TaskSnapshot) -> bool:
    """ECS has decided to stop the task, or it has stopped: it may leave Cloud Map at once."""
    return task.desired_status == STOPPED or task.last_status in LEAVING


def is_unhealthy_and_running(task: TaskSnapshot) -> bool:
    """ECS reports UNHEALTHY while the task runs; ``UNKNOWN`` (no health check, start period) never counts."""
    return task.health_status == UNHEALTHY and is_running(task)


def looks_like_task_id(instance_id: str) -> bool:
    return _TASK_ID.fullmatch(instance_id) is not None


def required_healthy(running: int, min_healthy_percent: float) -> int:
    """How many of ``running`` tasks must stay registered and healthy (0: the guard is off)."""
    if min_healthy_percent <= 0:
        return 0
    return max(1, math.ceil(running * min_healthy_percent / 100 - 1e-9))


# -- the reactor -----------------------------------------------------------------------------------
def stop_event_precheck(*, cluster_arn: str, group: str, desired_status: str, policy: Policy) -> Held | None:
    """What can be decided before the service is looked up (no AWS call for events we ignore)."""
    if desired_status != STOPPED:
        return Held(Hold.NOT_STOPPING, f"desiredStatus is {desired_status}")
    if service_name_from_group(group) is None:
        return Held(Hold.NOT_A_SERVICE, f"group {group!r} is not a service")
    if not policy.in_scope(cluster_arn):
        return Held(Hold.CLUSTER_OUT_OF_SCOPE, "cluster not in CLUSTER_ARNS")
    return None


def decide_stop_event(*, task_arn: str, service: EcsService | None, policy: Policy) -> Decision:
    """A stopping task leaves every Cloud Map service of its ECS service (all deployments); no guard."""
    if service is None:
        return Decision(held=[Held(Hold.SERVICE_NOT_FOUND, "ECS does not know the service")])
    if not service.uses_cloudmap:
        return Decision(held=[Held(Hold.NO_CLOUDMAP, "the service is not registered in Cloud Map")])
    if not service.in_scope(policy.tag_scope):
        return Decision(held=[Held(Hold.TAGS_OUT_OF_SCOPE, "cloudmap-reactor:ignore / :enabled tags")])
    removals = [
        Deregister(service.cluster_arn, service.service_name, task_arn, sid, Reason.TASK_STOPPING, Rule.STOP_EVENT)
        for sid in sorted(service.cloudmap_service_ids)
    ]
    return _with_dry_run(removals, policy)


# -- the poller, plan and doctor -------------------------------------------------------------------
def decide_cluster(snapshot: ClusterSnapshot, memory: Memory, policy: Policy) -> Decision:
    """Every action one pass takes in one cluster, what it holds back, and what it found."""
    managed = {name: s for name, s in snapshot.services.items() if s.managed(policy.tag_scope)}
    decision = Decision()
    if not managed:
        return decision
    by_service = _tasks_by_service(snapshot.tasks, managed)
    health: list[Deregister] = []
    for name, service in sorted(managed.items()):
        for task in by_service.get(name, []):
            if is_unhealthy_and_running(task):
                decision.unhealthy.append(UnhealthyTask(task=task, service=service))
            health.extend(_health_removals(service, task, snapshot.probe_failures, policy))
    actions = _guarded(health, snapshot, memory, policy, decision)
    if snapshot.reconcile:
        actions += _reconcile(snapshot, managed, memory, decision)
    decision.merge(_with_dry_run(actions, policy))
    decision.merge(_start_order(snapshot, memory, policy))
    return decision


def _health_removals(
    service: EcsService, task: TaskSnapshot, failures: Mapping[InstanceKey, int], policy: Policy
) -> list[Deregister]:
    """The Cloud Map services a running task should leave for its health (before the guard)."""
    if not is_running(task):
        return []
    sids = sorted(service.cloudmap_service_ids)
    if task.health_status == UNHEALTHY:
        reason, rule = Reason.UNHEALTHY, Rule.ECS_UNHEALTHY
    else:
        sids = [sid for sid in sids if failures.get((sid, task.task_id), 0) >= policy.probe_failure_threshold]
        reason, rule = Reason.PROBE_FAILED, Rule.PROBE_THRESHOLD
    return [Deregister(service.cluster_arn, service.service_name, task.task_arn, sid, reason, rule) for sid in sids]


def _guarded(
    removals: list[Deregister], snapshot: ClusterSnapshot, memory: Memory, policy: Policy, decision: Decision
) -> list[Action]:
    """Apply the fail-open guard per Cloud Map service to the pass's health removals."""
    by_sid: dict[str, list[Deregister]] = defaultdict(list)
    for removal in removals:
        by_sid[removal.cloudmap_service_id].append(removal)
    approved: list[Action] = []
    for sid, candidates in sorted(by_sid.items()):
        pending = [c for c in candidates if c.key not in memory.removed]
        if not pending:
            continue  # taken out earlier in this invocation
        if sid not in snapshot.fresh:
            decision.needs_listing.add(sid)  # the guard judges what is registered now: read it first
            continue
        registered = set(snapshot.instances[sid]) - {iid for s, iid in memory.removed if s == sid}
        owners = sorted(n for n, s in snapshot.services.items() if sid in s.cloudmap_service_ids)
        running = {t.task_id for t in snapshot.tasks if is_running(t) and t.service_name in owners}
        failing = {c.instance_id for c in candidates}
        verdict = GuardVerdict(
            cloudmap_service_id=sid,
            service_names=tuple(owners),
            running=len(running),
            healthy_registered=len((registered & running) - failing),
            required=required_healthy(len(running), policy.min_healthy_percent),
            failing=len(failing & registered),
            holds=False,
        )
        present = [c for c in pending if c.instance_id in registered]
        if not present:
            continue  # nothing registered to take out (gone already, or never registered)
        if verdict.healthy_registered < verdict.required:
            decision.guard.append(_holding(verdict))
            why = f"{verdict.healthy_registered} healthy registered, {verdict.required} required"
            decision.held.extend(Held(Hold.FAIL_OPEN, why, c) for c in present)
            continue
        decision.guard.append(verdict)
        approved.extend(present)
    return approved


def _holding(verdict: GuardVerdict) -> GuardVerdict:
    return GuardVerdict(
        verdict.cloudmap_service_id,
        verdict.service_names,
        verdict.running,
        verdict.healthy_registered,
        verdict.required,
        verdict.failing,
        holds=True,
    )


def _reconcile(
    snapshot: ClusterSnapshot, managed: Mapping[str, EcsService], memory: Memory, decision: Decision
) -> list[Action]:
    """Instances of tasks ECS is stopping or has stopped leave; ids ECS does not know are orphans."""
    running_ids = {t.task_id for t in snapshot.tasks}
    actions: list[Action] = []
    for name, service in sorted(managed.items()):
        for sid in sorted(service.cloudmap_service_ids):
            for instance_id in sorted(set(snapshot.instances.get(sid, {})) - running_ids):
                if (sid, instance_id) in memory.removed or _owner(sid, managed) != name:
                    continue
                task = snapshot.departed.get(instance_id)
                if task is None:
                    decision.orphans.append(OrphanInstance(snapshot.cluster_arn, name, sid, instance_id))
                elif is_leaving(task):
                    actions.append(
                        Deregister(snapshot.cluster_arn, name, task.task_arn, sid, Reason.RECONCILED, Rule.RECONCILE)
                    )
                # else: started after the task listing, or runs elsewhere: nothing to do
    return actions


def _owner(sid: str, managed: Mapping[str, EcsService]) -> str:
    """The ECS service a shared Cloud Map service's leftovers are reported under (the first by name)."""
    return min(name for name, s in managed.items() if sid in s.cloudmap_service_ids)


def _start_order(snapshot: ClusterSnapshot, memory: Memory, policy: Policy) -> Decision:
    """Stale Service Connect clients, and the one (at most) to redeploy this pass."""
    decision = Decision()
    services = list(snapshot.services.values())
    clients = start_order_clients(services, policy.tag_scope, every_endpoint=policy.stale_check_every_endpoint)
    by_service = _tasks_by_service(snapshot.tasks, {c.service_name: c for c, _ in clients})
    for client, endpoints in clients:
        created = {name: snapshot.endpoints_created[sid] for name, sid in endpoints.items()}
        if len(created) == len(endpoints) and (
            found := find_stale(client, by_service.get(client.service_name, []), created)
        ):
            decision.stale_clients.append(found)
    if choice := choose_redeployment(
        decision.stale_clients, heal_all=policy.redeploy_stale_clients, already=memory.redeployed
    ):
        decision.merge(_with_dry_run([Redeploy(choice)], policy))
    return decision


def _with_dry_run(actions: Iterable[Action], policy: Policy) -> Decision:
    actions = list(actions)
    if policy.dry_run:
        return Decision(held=[Held(Hold.DRY_RUN, "DRY_RUN=true", action) for action in actions])
    return Decision(actions=actions)


def _tasks_by_service(
    tasks: Iterable[TaskSnapshot], services: Mapping[str, EcsService]
) -> dict[str, list[TaskSnapshot]]:
    grouped: dict[str, list[TaskSnapshot]] = defaultdict(list)
    for task in tasks:
        if task.service_name is not None and task.service_name in services:
            grouped[task.service_name].append(task)
    return grouped
