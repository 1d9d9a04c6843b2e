"""Who leaves Cloud Map, and why: every rule of the reactor, the poller, ``plan`` and ``doctor``.

Pure functions (no AWS, no threads, no clock). The reactor calls ``stop_event_precheck`` and
``decide_stop_event``; the poller, ``plan`` and ``doctor`` call ``decide_cluster`` on what a pass
read. This package is the only place that decides; its modules, and the rules in the order a
reader meets them: ``__init__`` (the reactor, and one cluster's pass), ``health`` (leaving for
health or readiness, and the fail-open guard), ``recovery`` (the quarantine: back, forgotten,
replaced), ``upkeep`` (reconciliation, start order).

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
* Readiness (with the ledger): a task that failed its HTTP check before ever passing it, or (held
  until healthy by tag or policy) one ECS does not report ``HEALTHY`` yet, is not ready: it leaves
  as ``NotReady`` (``Rule.NOT_READY_PROBE``, ``Rule.NOT_READY_HEALTH``), guarded like the others.
* Quarantine (with the ledger): a health or readiness removal of a running task is recorded first
  with the instance's exact attributes. A quarantined instance comes back (``Rule.RECOVERED``)
  when its task runs in this pass and is healthy again (ECS ``HEALTHY``, or
  ``probe_healthy_threshold`` probes in a row); its record is forgotten, never registered again,
  when ECS is stopping the task or no longer lists it (``Rule.TASK_GONE``); optionally a task
  quarantined for failed probes too long is stopped (``Rule.REPLACE``), one per service per pass.
* Start order: at most one stale client per cluster and pass is redeployed (``Rule.START_ORDER``).
* Only services in scope (cluster list, tags) and registered in Cloud Map are touched; a dry run
  holds every action back and says what it would have done.
"""

from __future__ import annotations

from cloudmap_reactor.config import Policy
from cloudmap_reactor.core.decide.health import guarded, health_removals
from cloudmap_reactor.core.decide.recovery import recover
from cloudmap_reactor.core.decide.upkeep import reconcile, start_order, tasks_by_service, with_dry_run
from cloudmap_reactor.core.decisions import (
    Action,
    ClusterSnapshot,
    Decision,
    Deregister,
    Held,
    Hold,
    Memory,
    Restore,
    Rule,
    UnhealthyTask,
)
from cloudmap_reactor.core.model import (
    HOLD_UNTIL_HEALTHY_TAG,
    RUNNING,
    STOPPED,
    EcsService,
    Reason,
    is_true,
    is_unhealthy_and_running,
    service_name_from_group,
)


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
    return with_dry_run(removals, policy)


def started_event_precheck(*, cluster_arn: str, group: str, last_status: str, policy: Policy) -> Held | None:
    """A task of a service has started (ReadinessEvents): worth a look only if it may be held until healthy."""
    if last_status != RUNNING:
        return Held(Hold.NOT_STOPPING, f"lastStatus is {last_status}")
    if service_name_from_group(group) is None:
        return Held(Hold.NOT_A_SERVICE, f"group {group!r} is not a service")
    if not policy.in_scope(cluster_arn):
        return Held(Hold.CLUSTER_OUT_OF_SCOPE, "cluster not in CLUSTER_ARNS")
    if not policy.ledger_table:
        return Held(Hold.NO_LEDGER, "no ledger: a task taken out for readiness could not come back")
    return None


def held_until_healthy(service: EcsService, policy: Policy) -> bool:
    """Readiness by ECS health applies: the service is tagged, or every service is (HoldUntilHealthy)."""
    return service.managed(policy.tag_scope) and (
        policy.hold_until_healthy or is_true(service.tag(HOLD_UNTIL_HEALTHY_TAG))
    )


def decide_started_task(snapshot: ClusterSnapshot, task_arn: str, policy: Policy) -> Decision:
    """The poller's rules for one service, narrowed to one task: out while not HEALTHY, back once it is.

    ``snapshot`` holds that service alone (its tasks, its instances listed now, its records), so the
    fail-open guard counts only its tasks: tasks of another ECS service sharing a Cloud Map service
    are not counted as healthy, which can only hold more back. Everything else is the poller's.
    """
    full = decide_cluster(snapshot, Memory(), policy)
    task_id = task_arn.rsplit("/", 1)[-1]

    def concerns(action: Action | None) -> bool:
        if isinstance(action, Deregister):
            return action.task_arn == task_arn and action.rule is Rule.NOT_READY_HEALTH
        # Only what ECS health decides: a probe's verdict is the poller's (it is in the VPC).
        health_rules = (Rule.NOT_READY_HEALTH, Rule.ECS_UNHEALTHY)
        return (
            isinstance(action, Restore) and action.record.instance_id == task_id and action.record.rule in health_rules
        )

    return Decision(
        actions=[a for a in full.actions if concerns(a)],
        held=[h for h in full.held if concerns(h.action)],
        guard=[v for v in full.guard if any(concerns(h.action) for h in full.held)],
        needs_listing=full.needs_listing,
    )


def decide_cluster(snapshot: ClusterSnapshot, memory: Memory, policy: Policy) -> Decision:
    """Every action one pass takes in one cluster, what it holds back, and what it found."""
    managed = {name: s for name, s in snapshot.services.items() if s.managed(policy.tag_scope)}
    decision = Decision()
    if not managed:
        return decision
    by_service = tasks_by_service(snapshot.tasks, managed)
    health: list[Deregister] = []
    for name, service in sorted(managed.items()):
        for task in by_service.get(name, []):
            if is_unhealthy_and_running(task):
                decision.unhealthy.append(UnhealthyTask(task=task, service=service))
            health.extend(health_removals(service, task, snapshot, policy))
    actions = guarded(health, snapshot, memory, policy, decision)
    actions += recover(snapshot, managed, policy, decision)
    if snapshot.reconcile:
        actions += reconcile(snapshot, managed, memory, decision)
    decision.merge(with_dry_run(actions, policy))
    decision.merge(start_order(snapshot, memory, policy))
    return decision
