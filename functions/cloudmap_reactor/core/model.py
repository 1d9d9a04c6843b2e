"""The few facts about ECS the decisions need, independent of AWS response shapes."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

SERVICE_GROUP_PREFIX = "service:"
_CLOUDMAP_SERVICE_ARN = re.compile(
    r"^arn:aws(?:-[a-z]+)*:servicediscovery:[a-z0-9-]+:[0-9]{12}:service/(srv-[A-Za-z0-9]{1,64})$"
)


class Reason(StrEnum):
    """Why a task leaves Cloud Map: the ``Reason`` metric dimension."""

    TASK_STOPPING = "TaskStopping"
    UNHEALTHY = "Unhealthy"
    RECONCILED = "Reconciled"
    PROBE_FAILED = "ProbeFailed"
    NOT_READY = "NotReady"


# Reasons for which a task that still runs is taken out: recorded in the quarantine ledger, and
# registered again when it recovers. (TaskStopping and Reconciled are final.)
QUARANTINE_REASONS = frozenset({Reason.UNHEALTHY, Reason.PROBE_FAILED, Reason.NOT_READY})


# Service tags that scope this tool (read with DescribeServices include=[TAGS]).
IGNORE_TAG = "cloudmap-reactor:ignore"
ENABLED_TAG = "cloudmap-reactor:enabled"
# Service tags of the start-order check: the discovery names a client needs, and per-service healing.
DEPENDS_ON_TAG = "cloudmap-reactor:depends-on"
REDEPLOY_STALE_TAG = "cloudmap-reactor:redeploy-stale"
# Active HTTP health checks (core.probing): the path (or port and path) to probe, and the good codes.
HTTP_CHECK_TAG = "cloudmap-reactor:http-check"
HTTP_CHECK_CODES_TAG = "cloudmap-reactor:http-check-codes"
# Readiness by ECS health: a running task is held out of Cloud Map until ECS reports it HEALTHY.
HOLD_UNTIL_HEALTHY_TAG = "cloudmap-reactor:hold-until-healthy"


class TagScope(StrEnum):
    """``opt-out``: every service unless tagged ignore; ``opt-in``: only services tagged enabled."""

    OPT_OUT = "opt-out"
    OPT_IN = "opt-in"


class Outcome(StrEnum):
    DEREGISTERED = "deregistered"
    ALREADY_GONE = "already_gone"
    DRY_RUN = "dry_run"
    FAILED = "failed"


RUNNING = "RUNNING"
STOPPED = "STOPPED"
UNHEALTHY = "UNHEALTHY"
HEALTHY = "HEALTHY"
# lastStatus values of a task on its way out.
LEAVING = frozenset({"DEACTIVATING", "STOPPING", "DEPROVISIONING", "STOPPED", "DELETED"})
# What an ECS task id looks like (Cloud Map instance ids of ECS tasks are task ids).
TASK_ID_PATTERN = re.compile(r"[0-9a-f]{32}|[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


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
    return TASK_ID_PATTERN.fullmatch(instance_id) is not None


def cloudmap_service_id(discovery_arn: str) -> str | None:
    """``arn:aws:servicediscovery:…:service/srv-abc`` → ``srv-abc``; None for anything else."""
    match = _CLOUDMAP_SERVICE_ARN.fullmatch(discovery_arn)
    return match.group(1) if match else None


def task_id(task_arn: str) -> str:
    """The task id is the last path segment of both the short and the long task ARN format.

    Service Connect registers a task in Cloud Map under this id.
    """
    return task_arn.rsplit("/", 1)[-1]


def service_name_from_group(group: str) -> str | None:
    """``service:orders`` → ``orders``; None for standalone tasks (``family:…``)."""
    if group.startswith(SERVICE_GROUP_PREFIX) and len(group) > len(SERVICE_GROUP_PREFIX):
        return group[len(SERVICE_GROUP_PREFIX) :]
    return None


@dataclass(frozen=True, slots=True)
class EcsService:
    """An ECS service and the Cloud Map services its tasks are registered in.

    ``cloudmap_service_ids`` is the union over every deployment's Service Connect discovery names
    (so a task of an older deployment, during a rolling update, is found too) and the service's
    ``serviceRegistries`` (classic service discovery).
    """

    cluster_arn: str
    service_name: str
    service_arn: str
    cloudmap_service_ids: frozenset[str] = field(default_factory=frozenset)
    tags: tuple[tuple[str, str], ...] = ()
    # Service Connect: on at all (a client may expose no endpoint), its namespace, its endpoints
    # as (discovery name, Cloud Map service id), and whether a deployment is under way.
    service_connect: bool = False
    namespace: str | None = None
    endpoints: tuple[tuple[str, str], ...] = ()
    deployment_in_progress: bool = False
    # Every (discovery name, Cloud Map service id) of every deployment; "(registry)" for serviceRegistries.
    discovery: tuple[tuple[str, str], ...] = ()
    # What DescribeServices says of its tasks: how many run, the task definitions of its
    # deployments (a running task belongs to one of them), and when the oldest deployment was
    # created (no running task of the service started before it).
    running_count: int = 0
    task_definitions: tuple[str, ...] = ()
    deployed_since: datetime | None = None
    active: bool = True  # False: deleted (DescribeServices still answers for an INACTIVE service a while)

    @property
    def uses_cloudmap(self) -> bool:
        return bool(self.cloudmap_service_ids)

    def tag(self, key: str) -> str | None:
        return next((value for k, value in self.tags if k == key), None)

    def in_scope(self, scope: TagScope) -> bool:
        """Whether this tool may touch the service's registrations at all (both functions ask)."""
        if is_true(self.tag(IGNORE_TAG)):
            return False
        return scope is TagScope.OPT_OUT or is_true(self.tag(ENABLED_TAG))

    def managed(self, scope: TagScope) -> bool:
        """Registered in Cloud Map (Service Connect or service discovery) and in scope."""
        return self.uses_cloudmap and self.in_scope(scope)


def is_true(value: str | None) -> bool:
    """A tag value meaning yes (``true``, any case)."""
    return value is not None and value.strip().lower() == "true"


@dataclass(frozen=True, slots=True)
class TaskSnapshot:
    """What ``DescribeTasks`` says about one task at one moment."""

    cluster_arn: str
    task_arn: str
    group: str
    last_status: str
    desired_status: str
    health_status: str
    started_at: datetime | None = None

    @property
    def task_id(self) -> str:
        return task_id(self.task_arn)

    @property
    def service_name(self) -> str | None:
        return service_name_from_group(self.group)


@dataclass(frozen=True, slots=True)
class Deregistration:
    """One attempt to remove one task from one Cloud Map service, and how it ended."""

    cluster_arn: str
    service_name: str
    task_arn: str
    cloudmap_service_id: str
    reason: Reason
    outcome: Outcome
    error: str | None = None
    rule: str = ""  # the core.decide rule that asked for it

    @property
    def instance_id(self) -> str:
        return task_id(self.task_arn)
