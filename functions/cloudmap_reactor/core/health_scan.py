"""Passes of the health poller: find UNHEALTHY running tasks of Cloud Map services, remove them.

A ``HealthScanner`` lives for one invocation and runs one pass per poll. What it learns about
services (which use Cloud Map, and which Cloud Map services) is kept between passes and
refreshed only every ``refresh_every`` passes or when a task shows up for a service it has not
described yet. In steady state a pass over T tasks in a cluster costs ``ListTasks`` and
``DescribeTasks`` once per 100 tasks each: the batching floor. Clusters are scanned concurrently.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from cloudmap_reactor.core.deregistration import deregister_task
from cloudmap_reactor.core.model import Deregistration, EcsService, Outcome, Reason, TaskSnapshot
from cloudmap_reactor.core.ports import AwsCallFailed, FleetReader, InstanceRemover

UNHEALTHY = "UNHEALTHY"
RUNNING = "RUNNING"
ALL_CLUSTERS = "*"


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
    services_described: int = 0
    unhealthy: list[UnhealthyTask] = field(default_factory=list)
    deregistrations: list[Deregistration] = field(default_factory=list)
    cluster_failures: list[ClusterFailure] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        """Every in-scope cluster was read; the heartbeat metric is emitted only then."""
        return not self.cluster_failures

    def merge(self, other: HealthPassResult) -> None:
        self.clusters_scanned += other.clusters_scanned
        self.services_with_cloudmap += other.services_with_cloudmap
        self.tasks_examined += other.tasks_examined
        self.services_described += other.services_described
        self.unhealthy.extend(other.unhealthy)
        self.deregistrations.extend(other.deregistrations)
        self.cluster_failures.extend(other.cluster_failures)


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


@dataclass
class _ClusterView:
    """The services of one cluster as last described; ``None`` marks a name ECS does not know."""

    services: dict[str, EcsService | None]
    described_on_pass: int

    def with_cloudmap(self) -> dict[str, EcsService]:
        return {name: s for name, s in self.services.items() if s is not None and s.uses_cloudmap}


class HealthScanner:
    """Runs health passes over the clusters in scope (every cluster when ``cluster_arns`` is empty)."""

    def __init__(
        self,
        *,
        fleet: FleetReader,
        remover: InstanceRemover,
        cluster_arns: Sequence[str],
        dry_run: bool,
        refresh_every: int = 6,
        concurrency: int = 4,
    ) -> None:
        self._fleet = fleet
        self._remover = remover
        self._configured_clusters = list(cluster_arns)
        self._dry_run = dry_run
        self._refresh_every = max(1, refresh_every)
        self._concurrency = max(1, concurrency)
        self._pass = -1
        self._clusters: list[str] | None = None
        self._clusters_listed_on = -1
        self._views: dict[str, _ClusterView] = {}
        # Cloud Map services each task was already taken out of during this invocation: an
        # UNHEALTHY task stays in ECS until it is replaced, and is not deregistered again each pass.
        self._removed: dict[str, set[str]] = {}

    def run_pass(self) -> HealthPassResult:
        """One pass over every cluster; a cluster whose reads fail is recorded, the others still scanned."""
        self._pass += 1
        result = HealthPassResult()
        try:
            clusters = self._clusters_in_scope()
        except AwsCallFailed as exc:
            result.cluster_failures.append(ClusterFailure(cluster_arn=ALL_CLUSTERS, error=str(exc)))
            return result
        if not clusters:
            return result
        with ThreadPoolExecutor(max_workers=min(self._concurrency, len(clusters))) as pool:
            for cluster_result in pool.map(self._scan_cluster_safely, clusters):
                result.merge(cluster_result)
        return result

    def _clusters_in_scope(self) -> list[str]:
        if self._configured_clusters:
            return self._configured_clusters
        if self._clusters is None or self._pass - self._clusters_listed_on >= self._refresh_every:
            self._clusters = self._fleet.list_cluster_arns()
            self._clusters_listed_on = self._pass
        return self._clusters

    def _scan_cluster_safely(self, cluster_arn: str) -> HealthPassResult:
        try:
            return self._scan_cluster(cluster_arn)
        except AwsCallFailed as exc:
            self._views.pop(cluster_arn, None)  # describe it afresh next pass
            return HealthPassResult(cluster_failures=[ClusterFailure(cluster_arn=cluster_arn, error=str(exc))])

    def _scan_cluster(self, cluster_arn: str) -> HealthPassResult:
        result = HealthPassResult(clusters_scanned=1)
        view = self._views.get(cluster_arn)
        if view is None or self._pass - view.described_on_pass >= self._refresh_every:
            described = self._fleet.describe_services(cluster_arn, self._fleet.list_service_arns(cluster_arn))
            result.services_described += len(described)
            view = _ClusterView({s.service_name: s for s in described}, described_on_pass=self._pass)
            self._views[cluster_arn] = view
        if not view.with_cloudmap():
            return result  # nothing here is registered in Cloud Map: no task reads needed

        tasks = self._fleet.describe_running_tasks(cluster_arn)
        result.tasks_examined = len(tasks)
        unknown = sorted({t.service_name for t in tasks if t.service_name and t.service_name not in view.services})
        if unknown:  # a service created since the last refresh
            found = {s.service_name: s for s in self._fleet.describe_services(cluster_arn, unknown)}
            result.services_described += len(found)
            view.services.update({name: found.get(name) for name in unknown})

        services = view.with_cloudmap()
        result.services_with_cloudmap = len(services)
        result.unhealthy = select_unhealthy(tasks, services)
        for found_task in result.unhealthy:
            removed = self._removed.setdefault(found_task.task.task_arn, set())
            pending = found_task.service.cloudmap_service_ids - removed
            if not pending:
                continue
            records = deregister_task(
                cluster_arn=cluster_arn,
                service_name=found_task.service.service_name,
                task_arn=found_task.task.task_arn,
                cloudmap_service_ids=pending,
                reason=Reason.UNHEALTHY,
                remover=self._remover,
                dry_run=self._dry_run,
            )
            removed.update(r.cloudmap_service_id for r in records if r.outcome is not Outcome.FAILED)
            result.deregistrations.extend(records)
        return result
