"""Reconciliation (instances of tasks that are leaving) and start order (stale Service Connect clients)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping

from cloudmap_reactor.config import Policy
from cloudmap_reactor.core.decisions import (
    Action,
    ClusterSnapshot,
    Decision,
    Deregister,
    Held,
    Hold,
    Memory,
    OrphanInstance,
    Redeploy,
    Rule,
)
from cloudmap_reactor.core.model import (
    EcsService,
    Reason,
    TaskSnapshot,
    is_leaving,
)
from cloudmap_reactor.core.start_order import choose_redeployment, find_stale, start_order_clients


def reconcile(
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


def start_order(snapshot: ClusterSnapshot, memory: Memory, policy: Policy) -> Decision:
    """Stale Service Connect clients, and the one (at most) to redeploy this pass."""
    decision = Decision()
    services = list(snapshot.services.values())
    clients = start_order_clients(services, policy.tag_scope, every_endpoint=policy.stale_check_every_endpoint)
    by_service = tasks_by_service(snapshot.tasks, {c.service_name: c for c, _ in clients})
    for client, endpoints in clients:
        created = {name: snapshot.endpoints_created[sid] for name, sid in endpoints.items()}
        if len(created) == len(endpoints) and (
            found := find_stale(client, by_service.get(client.service_name, []), created)
        ):
            decision.stale_clients.append(found)
    if choice := choose_redeployment(
        decision.stale_clients, heal_all=policy.redeploy_stale_clients, already=memory.redeployed
    ):
        decision.merge(with_dry_run([Redeploy(choice)], policy))
    return decision


def with_dry_run(actions: Iterable[Action], policy: Policy) -> Decision:
    actions = list(actions)
    if policy.dry_run:
        return Decision(held=[Held(Hold.DRY_RUN, "DRY_RUN=true", action) for action in actions])
    return Decision(actions=actions)


def tasks_by_service(
    tasks: Iterable[TaskSnapshot], services: Mapping[str, EcsService]
) -> dict[str, list[TaskSnapshot]]:
    grouped: dict[str, list[TaskSnapshot]] = defaultdict(list)
    for task in tasks:
        if task.service_name is not None and task.service_name in services:
            grouped[task.service_name].append(task)
    return grouped
