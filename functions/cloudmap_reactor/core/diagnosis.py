"""What `cloudmap-reactor doctor` finds in an account: Cloud Map and ECS side by side, per service.

Read-only: it uses the same readers and decisions as the poller (fail-open plan, start-order
check) but never the deregistration or deployment paths.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from cloudmap_reactor.core.model import EcsService, TagScope, TaskSnapshot
from cloudmap_reactor.core.ports import CloudMapRegistry, FleetReader
from cloudmap_reactor.core.probing import InvalidHttpCheck, http_check_of
from cloudmap_reactor.core.safety import (
    is_leaving,
    is_unhealthy_and_running,
    looks_like_task_id,
    plan_unhealthy_removals,
)
from cloudmap_reactor.core.start_order import created_dates, declared_dependencies, dependency_endpoints, find_stale


@dataclass(frozen=True, slots=True)
class ServiceDiagnosis:
    cluster_arn: str
    service_name: str
    in_scope: bool
    discovery: tuple[tuple[str, str], ...]  # (discovery name or "(registry)", Cloud Map service id)
    running_tasks: int
    registered_instances: int
    unmatched_instances: tuple[str, ...]  # registered ids that match no task ECS knows (leak, or the id assumption)
    stopping_registered: tuple[str, ...]  # registered tasks ECS is stopping or stopped: the reactor's work
    tasks_without_instance: tuple[str, ...]  # running task ids registered in none of the service's Cloud Map services
    unhealthy_registered: tuple[str, ...]  # UNHEALTHY running tasks still registered: the poller's work
    unknown_health: int  # no container health check (or in start period): HTTP-probe candidates
    fail_open: bool  # the guard would keep this service's UNHEALTHY tasks
    stale_tasks: int = 0
    stale_endpoints: tuple[str, ...] = ()
    http_check: str | None = None  # "GET /healthz on the instance's port, 200-399"; None: not opted in
    http_check_error: str | None = None  # the http-check tags are wrong: the poller will not probe it

    @property
    def needs_attention(self) -> bool:
        return bool(
            self.unmatched_instances
            or self.stopping_registered
            or self.tasks_without_instance
            or self.unhealthy_registered
            or self.fail_open
            or self.stale_tasks
            or self.http_check_error
        )


@dataclass(slots=True)
class Diagnosis:
    services: list[ServiceDiagnosis] = field(default_factory=list)

    @property
    def needs_attention(self) -> bool:
        return any(s.needs_attention for s in self.services)


def diagnose_cluster(
    cluster_arn: str,
    *,
    fleet: FleetReader,
    registry: CloudMapRegistry,
    scope: TagScope = TagScope.OPT_OUT,
    min_healthy_percent: float = 50.0,
    every_endpoint: bool = False,
    created_cache: dict[str, datetime] | None = None,
) -> list[ServiceDiagnosis]:
    """Every service of the cluster that is registered in Cloud Map or uses Service Connect."""
    services = fleet.describe_services(cluster_arn, fleet.list_service_arns(cluster_arn))
    relevant = [s for s in services if s.uses_cloudmap or s.service_connect]
    if not relevant:
        return []
    tasks = fleet.describe_running_tasks(cluster_arn)
    cache = {} if created_cache is None else created_cache
    return [
        _diagnose(
            service,
            [t for t in tasks if t.service_name == service.service_name],
            services,
            registry,
            cache,
            fleet=fleet,
            scope=scope,
            min_healthy_percent=min_healthy_percent,
            every_endpoint=every_endpoint,
        )
        for service in sorted(relevant, key=lambda s: s.service_name)
    ]


def _diagnose(
    service: EcsService,
    tasks: list[TaskSnapshot],
    all_services: list[EcsService],
    registry: CloudMapRegistry,
    cache: dict[str, datetime],
    *,
    fleet: FleetReader,
    scope: TagScope,
    min_healthy_percent: float,
    every_endpoint: bool,
) -> ServiceDiagnosis:
    running = [t for t in tasks if t.last_status == "RUNNING"]
    running_ids = {t.task_id for t in running}
    instances = {sid: set(registry.list_instances(sid)) for sid in sorted(service.cloudmap_service_ids)}
    registered = set().union(*instances.values()) if instances else set()
    missing = sorted(t.task_id for t in running if all(t.task_id not in ids for ids in instances.values()))
    not_running = sorted(registered - running_ids)
    candidates = [i for i in not_running if looks_like_task_id(i)]
    known = {t.task_id: t for t in fleet.describe_tasks(service.cluster_arn, candidates)} if candidates else {}
    stopping = tuple(i for i in not_running if i in known and is_leaving(known[i]))
    unhealthy = sorted(t.task_id for t in running if is_unhealthy_and_running(t) and t.task_id in registered)
    plan = plan_unhealthy_removals(tasks, already_removed=set(), min_healthy_percent=min_healthy_percent)
    stale_tasks = 0
    stale_endpoints: tuple[str, ...] = ()
    if service.service_connect and (every_endpoint or declared_dependencies(service)):
        endpoints = dependency_endpoints(service, all_services, every_endpoint=every_endpoint)
        created = created_dates(endpoints, registry.service_created_at, cache) if endpoints else {}
        found = find_stale(service, running, created)
        if found:
            stale_tasks = len(found.stale_tasks)
            stale_endpoints = tuple(name for name, _ in found.newer_endpoints)
    check, check_error = None, None
    try:
        if (parsed := http_check_of(service)) is not None:
            port = "the instance's port" if parsed.port is None else f"port {parsed.port}"
            check = f"GET {parsed.path} on {port}, {parsed.codes}"
    except InvalidHttpCheck as exc:
        check_error = str(exc)
    return ServiceDiagnosis(
        cluster_arn=service.cluster_arn,
        service_name=service.service_name,
        in_scope=service.in_scope(scope),
        discovery=service.discovery,
        running_tasks=len(running),
        registered_instances=len(registered),
        unmatched_instances=tuple(i for i in not_running if i not in known),
        stopping_registered=stopping,
        tasks_without_instance=tuple(missing) if service.uses_cloudmap else (),
        unhealthy_registered=tuple(unhealthy),
        unknown_health=sum(1 for t in running if t.health_status == "UNKNOWN"),
        fail_open=plan.fail_open and service.uses_cloudmap,
        stale_tasks=stale_tasks,
        stale_endpoints=stale_endpoints,
        http_check=check,
        http_check_error=check_error,
    )
