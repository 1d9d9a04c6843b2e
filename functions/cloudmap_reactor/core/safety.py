"""Never make things worse: the fail-open guard, and what reconciliation may remove.

A tool that removes endpoints can cause the outage it is meant to prevent. Like a load balancer
that routes to every target when all are unhealthy (or Envoy's panic threshold), the poller
leaves a service alone when removing its UNHEALTHY tasks would leave too few registered and
healthy: a blip in a shared dependency then degrades the service instead of emptying it.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field

from cloudmap_reactor.core.model import TaskSnapshot

UNHEALTHY = "UNHEALTHY"
RUNNING = "RUNNING"
STOPPED = "STOPPED"
# lastStatus values of a task on its way out.
LEAVING = frozenset({"DEACTIVATING", "STOPPING", "DEPROVISIONING", "STOPPED", "DELETED"})
# What an ECS task id looks like (Cloud Map instance ids of ECS tasks are task ids).
_TASK_ID = re.compile(r"[0-9a-f]{32}|[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


@dataclass(frozen=True, slots=True)
class RemovalPlan:
    """Which unhealthy tasks of one service to deregister now, or why none."""

    remove: list[TaskSnapshot] = field(default_factory=list)
    unhealthy: int = 0
    running: int = 0
    healthy_after: int = 0
    fail_open: bool = False

    @property
    def healthy_percent_after(self) -> float:
        return 100.0 * self.healthy_after / self.running if self.running else 100.0


def plan_unhealthy_removals(
    tasks: Iterable[TaskSnapshot],
    *,
    already_removed: Collection[str],
    min_healthy_percent: float,
    failing_probes: Collection[str] = frozenset(),
) -> RemovalPlan:
    """Deregister a service's unhealthy running tasks only if enough stay registered and healthy.

    ``tasks`` are the service's tasks whose desired status is RUNNING; only those that are RUNNING
    count. Unhealthy means ECS reports UNHEALTHY, or the task's ARN is in ``failing_probes`` (it
    failed the HTTP probes the threshold number of times); ``UNKNOWN`` tasks have no health check
    and serve traffic. ``already_removed`` are task ARNs this tool took out earlier; they no longer
    count as registered. If removing the new unhealthy tasks would leave fewer than
    ``min_healthy_percent`` percent of the running tasks registered and healthy, nothing is
    removed (fail open).
    """
    running = [t for t in tasks if t.last_status == RUNNING and t.desired_status == RUNNING]

    def sick(task: TaskSnapshot) -> bool:
        return task.health_status == UNHEALTHY or task.task_arn in failing_probes

    unhealthy = [t for t in running if sick(t)]
    new = [t for t in unhealthy if t.task_arn not in already_removed]
    healthy_after = sum(1 for t in running if not sick(t) and t.task_arn not in already_removed)
    plan = RemovalPlan(remove=new, unhealthy=len(unhealthy), running=len(running), healthy_after=healthy_after)
    if new and plan.healthy_percent_after < min_healthy_percent:
        return RemovalPlan(unhealthy=len(unhealthy), running=len(running), healthy_after=healthy_after, fail_open=True)
    return plan


def is_unhealthy_and_running(task: TaskSnapshot) -> bool:
    """ECS reports the task UNHEALTHY while it runs and is meant to keep running.

    ``UNKNOWN`` (no container health check, or still in its start period) and ``HEALTHY`` never
    qualify; neither does a task ECS is already stopping (the reactor handles those).
    """
    return task.health_status == UNHEALTHY and task.last_status == RUNNING and task.desired_status == RUNNING


def looks_like_task_id(instance_id: str) -> bool:
    return _TASK_ID.fullmatch(instance_id) is not None


def is_leaving(task: TaskSnapshot) -> bool:
    """ECS has decided to stop the task, or it has stopped: it may leave Cloud Map at once."""
    return task.desired_status == STOPPED or task.last_status in LEAVING
