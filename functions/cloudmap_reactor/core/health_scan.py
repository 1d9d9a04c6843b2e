"""One pass of the health poller: find UNHEALTHY running tasks of Cloud Map services, remove them."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from cloudmap_reactor.core.deregistration import deregister_task
from cloudmap_reactor.core.model import Deregistration, EcsService, Reason, TaskSnapshot
from cloudmap_reactor.core.ports import AwsCallFailed, FleetReader, InstanceRemover

UNHEALTHY = "UNHEALTHY"
RUNNING = "RUNNING"


@dataclass(frozen=True, slots=True)
class UnhealthyTask:
    task: TaskSnapshot
    service: EcsService


@dataclass(frozen=True, slots=True)
class ClusterFailure:
    cluster_arn: str
    error: str


@dataclass(slots=True)
class HealthPassResult:
    clusters_scanned: int = 0
    services_with_cloudmap: int = 0
    tasks_examined: int = 0
    unhealthy: list[UnhealthyTask] = field(default_factory=list)
    deregistrations: list[Deregistration] = field(default_factory=list)
    cluster_failures: list[ClusterFailure] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        """Every in-scope cluster was read; the heartbeat metric is emitted only then."""
        return not self.cluster_failures


def select_unhealthy(tasks: Iterable[TaskSnapshot], services: Mapping[str, EcsService]) -> list[UnhealthyTask]:
    """Tasks that ECS reports UNHEALTHY while RUNNING, in services registered in Cloud Map.

    ``UNKNOWN`` (no container health check, or still in its start period) and ``HEALTHY`` are
    never acted on; neither are tasks ECS already stops (the reactor handles those).
    """
    selected: list[UnhealthyTask] = []
    for task in tasks:
        if task.health_status != UNHEALTHY or task.last_status != RUNNING or task.desired_status != RUNNING:
            continue
        service = services.get(task.service_name or "")
        if service is not None and service.uses_cloudmap:
            selected.append(UnhealthyTask(task=task, service=service))
    return selected


def run_health_pass(
    cluster_arns: Sequence[str],
    *,
    fleet: FleetReader,
    remover: InstanceRemover,
    dry_run: bool,
) -> HealthPassResult:
    """Scan every cluster (all of the account's when ``cluster_arns`` is empty).

    A cluster whose reads fail is recorded and skipped; the others are still scanned.
    """
    result = HealthPassResult()
    if cluster_arns:
        clusters = list(cluster_arns)
    else:
        try:
            clusters = fleet.list_cluster_arns()
        except AwsCallFailed as exc:
            result.cluster_failures.append(ClusterFailure(cluster_arn="*", error=str(exc)))
            return result
    for cluster_arn in clusters:
        try:
            _scan_cluster(cluster_arn, fleet=fleet, remover=remover, dry_run=dry_run, result=result)
        except AwsCallFailed as exc:
            result.cluster_failures.append(ClusterFailure(cluster_arn=cluster_arn, error=str(exc)))
    return result


def _scan_cluster(
    cluster_arn: str,
    *,
    fleet: FleetReader,
    remover: InstanceRemover,
    dry_run: bool,
    result: HealthPassResult,
) -> None:
    service_arns = fleet.list_service_arns(cluster_arn)
    services = {s.service_name: s for s in fleet.describe_services(cluster_arn, service_arns) if s.uses_cloudmap}
    result.clusters_scanned += 1
    result.services_with_cloudmap += len(services)
    if not services:
        return  # nothing in this cluster is registered in Cloud Map: no task reads needed
    tasks = fleet.describe_tasks(cluster_arn, fleet.list_running_task_arns(cluster_arn))
    result.tasks_examined += len(tasks)
    unhealthy = select_unhealthy(tasks, services)
    result.unhealthy.extend(unhealthy)
    for found in unhealthy:
        result.deregistrations.extend(
            deregister_task(
                cluster_arn=cluster_arn,
                service_name=found.service.service_name,
                task_arn=found.task.task_arn,
                cloudmap_service_ids=found.service.cloudmap_service_ids,
                reason=Reason.UNHEALTHY,
                remover=remover,
                dry_run=dry_run,
            )
        )
