"""What `cloudmap-reactor doctor` shows per service: Cloud Map next to ECS, and what the poller would do.

Pure: it reads a ``ClusterSnapshot`` (listed with every Cloud Map service, in scope or not) and
the ``Decision`` that ``core.decide`` made on it. Nothing here judges a task on its own: what is
"stopping", "unhealthy" or "held by fail-open" comes from the decision, so ``doctor`` can never
drift from what the poller does.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cloudmap_reactor.config import Policy
from cloudmap_reactor.core.decisions import ClusterSnapshot, Decision, Deregister, Rule
from cloudmap_reactor.core.model import EcsService, is_running
from cloudmap_reactor.core.probing import InvalidHttpCheck, http_check_of


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
    fail_open: bool  # the guard holds this service's health removals
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


def diagnose_cluster(snapshot: ClusterSnapshot, decision: Decision, policy: Policy) -> list[ServiceDiagnosis]:
    """Every service of the cluster that is registered in Cloud Map or uses Service Connect."""
    relevant = [s for s in snapshot.services.values() if s.uses_cloudmap or s.service_connect]
    return [_diagnose(s, snapshot, decision, policy) for s in sorted(relevant, key=lambda s: s.service_name)]


def _diagnose(service: EcsService, snapshot: ClusterSnapshot, decision: Decision, policy: Policy) -> ServiceDiagnosis:
    name = service.service_name
    running = [t for t in snapshot.tasks if t.service_name == name and is_running(t)]
    listed = {sid: set(snapshot.instances.get(sid, {})) for sid in sorted(service.cloudmap_service_ids)}
    registered = set().union(*listed.values()) if listed else set()
    removals = [a for a in decision.planned() if isinstance(a, Deregister) and a.service_name == name]
    held = [h.action for h in decision.held if isinstance(h.action, Deregister) and h.action.service_name == name]
    leaving = sorted({a.instance_id for a in removals if a.rule is Rule.RECONCILE})
    unhealthy = sorted({a.instance_id for a in [*removals, *held] if a.rule is Rule.ECS_UNHEALTHY} & registered)
    stale = next((s for s in decision.stale_clients if s.service.service_name == name), None)
    check, check_error = None, None
    try:
        if (parsed := http_check_of(service)) is not None:
            port = "the instance's port" if parsed.port is None else f"port {parsed.port}"
            check = f"GET {parsed.path} on {port}, {parsed.codes}"
    except InvalidHttpCheck as exc:
        check_error = str(exc)
    return ServiceDiagnosis(
        cluster_arn=service.cluster_arn,
        service_name=name,
        in_scope=service.in_scope(policy.tag_scope),
        discovery=service.discovery,
        running_tasks=len(running),
        registered_instances=len(registered),
        unmatched_instances=tuple(sorted({o.instance_id for o in decision.orphans if o.service_name == name})),
        stopping_registered=tuple(leaving),
        tasks_without_instance=tuple(
            sorted(t.task_id for t in running if all(t.task_id not in ids for ids in listed.values()))
        )
        if service.uses_cloudmap
        else (),
        unhealthy_registered=tuple(unhealthy),
        unknown_health=sum(1 for t in running if t.health_status == "UNKNOWN"),
        fail_open=any(name in v.service_names for v in decision.fail_open),
        stale_tasks=len(stale.stale_tasks) if stale else 0,
        stale_endpoints=tuple(n for n, _ in stale.newer_endpoints) if stale else (),
        http_check=check,
        http_check_error=check_error,
    )
