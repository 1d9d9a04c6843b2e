"""What `cloudmap-reactor doctor` shows per service: Cloud Map next to ECS, and what the poller would do.

Pure: it reads a ``ClusterSnapshot`` (listed with every Cloud Map service, in scope or not) and
the ``Decision`` that ``core.decide`` made on it. Nothing here judges a task on its own: what is
"stopping", "unhealthy" or "held by fail-open" comes from the decision, so ``doctor`` can never
drift from what the poller does.

One check is the diagnosis's own, because no rule acts on it: every registered instance of a
task ECS knows should carry the same attribute *keys* as its siblings in the same Cloud Map
service (``attribute_key_mismatches``). ECS writes the same keys for every task of a service, so an
instance with keys missing or added was registered by someone else: a restore from the
quarantine that did not put back exactly what ECS had written, or a hand registration.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

from cloudmap_reactor.config import Policy
from cloudmap_reactor.core.decisions import (
    Action,
    ClusterSnapshot,
    Decision,
    Deregister,
    Forget,
    Restore,
    Rule,
    StopTask,
)
from cloudmap_reactor.core.model import STOPPED, EcsService, is_running
from cloudmap_reactor.core.probing import InvalidHttpCheck, http_check_of


@dataclass(frozen=True, slots=True)
class KeyMismatch:
    """A registered instance whose attribute keys differ from those of its siblings in one Cloud Map service."""

    cloudmap_service_id: str
    instance_id: str
    missing: tuple[str, ...]  # keys its siblings carry and it does not
    extra: tuple[str, ...]  # keys it carries and its siblings do not


def attribute_key_mismatches(
    cloudmap_service_id: str,
    instances: Mapping[str, Mapping[str, str]],
    siblings: Collection[str],
    checked: Collection[str],
) -> list[KeyMismatch]:
    """The ``checked`` instances whose attribute keys are not those of their ``siblings``.

    ``instances`` is one Cloud Map service's listing (instance id -> attributes); ``siblings`` the
    ids whose key set is the reference (the instances of running tasks: ECS registered them). The
    reference is the key set most siblings carry. When two or more key sets are equally common
    there is no majority: then the reference is all of them, so every instance that lacks a key
    one of them has is missing it, and every instance with a key one of them lacks has it extra
    (two siblings that disagree are both reported). A single instance agrees with itself.
    """
    votes = Counter(frozenset(instances[i]) for i in siblings if i in instances)
    if not votes:
        return []
    most = max(votes.values())
    leaders = [keys for keys, count in votes.items() if count == most]
    every, common = frozenset().union(*leaders), frozenset.intersection(*leaders)
    found = []
    for instance_id in sorted(set(checked) & set(instances)):
        keys = frozenset(instances[instance_id])
        missing, extra = every - keys, keys - common
        if missing or extra:
            found.append(KeyMismatch(cloudmap_service_id, instance_id, tuple(sorted(missing)), tuple(sorted(extra))))
    return found


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
    # Of stopping_registered: tasks ECS has stopped (lastStatus STOPPED) and left registered.
    stopped_registered: tuple[str, ...] = ()
    # Registered instances whose attribute keys differ from their siblings' (a restore, a hand registration).
    attribute_key_mismatches: tuple[KeyMismatch, ...] = ()
    # The quarantine ledger (None: not read): records of this service's instances taken out while
    # their task runs, and what the poller would do with them now.
    quarantined: int | None = None
    quarantined_instances: tuple[str, ...] = ()
    would_restore: tuple[str, ...] = ()  # healthy again: registered again with their recorded attributes
    would_forget: tuple[str, ...] = ()  # their task is stopping, stopped or gone: the record is deleted
    would_replace: tuple[str, ...] = ()  # quarantined too long: their task is stopped

    @property
    def needs_attention(self) -> bool:
        return bool(
            self.unmatched_instances
            or self.stopping_registered
            or self.attribute_key_mismatches
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
    snapshot: ClusterSnapshot, decision: Decision, policy: Policy, *, ledger_read: bool = False
) -> list[ServiceDiagnosis]:
    """Every service of the cluster that is registered in Cloud Map or uses Service Connect.

    ``ledger_read``: ``snapshot.quarantined`` holds the ledger's records of this cluster (otherwise
    the quarantine is unknown, not empty).
    """
    relevant = [s for s in snapshot.services.values() if s.uses_cloudmap or s.service_connect]
    mismatches = _key_mismatches(snapshot)
    return [
        _diagnose(s, snapshot, decision, policy, mismatches=mismatches, ledger_read=ledger_read)
        for s in sorted(relevant, key=lambda s: s.service_name)
    ]


def _key_mismatches(snapshot: ClusterSnapshot) -> dict[str, list[KeyMismatch]]:
    """Per ECS service, its tasks' instances whose attribute keys differ from their siblings' (any Cloud Map service).

    The siblings are the instances of the running tasks of every ECS service registered in that
    Cloud Map service; an id that matches no task ECS knows is an orphan, reported as such, and
    never checked (nor counted) here.
    """
    owner = {t.task_id: t.service_name for t in (*snapshot.tasks, *snapshot.departed.values())}
    found: dict[str, list[KeyMismatch]] = {}
    for sid, instances in sorted(snapshot.instances.items()):
        owners = {n for n, s in snapshot.services.items() if sid in s.cloudmap_service_ids}
        siblings = {t.task_id for t in snapshot.tasks if is_running(t) and t.service_name in owners}
        for mismatch in attribute_key_mismatches(sid, instances, siblings, owner.keys()):
            found.setdefault(owner[mismatch.instance_id] or "", []).append(mismatch)
    return found


def _diagnose(
    service: EcsService,
    snapshot: ClusterSnapshot,
    decision: Decision,
    policy: Policy,
    *,
    mismatches: Mapping[str, list[KeyMismatch]],
    ledger_read: bool,
) -> ServiceDiagnosis:
    name = service.service_name
    running = [t for t in snapshot.tasks if t.service_name == name and is_running(t)]
    listed = {sid: set(snapshot.instances.get(sid, {})) for sid in sorted(service.cloudmap_service_ids)}
    registered = set().union(*listed.values()) if listed else set()
    planned = decision.planned()
    removals = [a for a in planned if isinstance(a, Deregister) and a.service_name == name]
    held = [h.action for h in decision.held if isinstance(h.action, Deregister) and h.action.service_name == name]
    leaving = sorted({a.instance_id for a in removals if a.rule is Rule.RECONCILE})
    stopped = [i for i in leaving if (t := snapshot.departed.get(i)) is not None and t.last_status == STOPPED]
    records = [r for r in snapshot.quarantined if r.service_name == name]
    quarantined_ids = {r.instance_id for r in records}
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
            sorted(
                t.task_id
                for t in running
                if all(t.task_id not in ids for ids in listed.values()) and t.task_id not in quarantined_ids
            )
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
        stopped_registered=tuple(stopped),
        attribute_key_mismatches=tuple(mismatches.get(name, ())),
        quarantined=len(records) if ledger_read else None,
        quarantined_instances=tuple(sorted(quarantined_ids)),
        would_restore=_of_records(planned, Restore, name),
        would_forget=_of_records(planned, Forget, name),
        would_replace=_of_records(planned, StopTask, name),
    )


def _of_records(actions: list[Action], kind: type[Restore | Forget | StopTask], service_name: str) -> tuple[str, ...]:
    """Instance ids of the quarantine actions of one kind for one ECS service."""
    return tuple(
        sorted({a.record.instance_id for a in actions if isinstance(a, kind) and a.record.service_name == service_name})
    )
