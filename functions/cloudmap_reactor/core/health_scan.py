"""Passes of the health poller: take UNHEALTHY running tasks of Cloud Map services out, safely.

A ``HealthScanner`` lives for one invocation and runs one pass per poll. What it learns about
services (which use Cloud Map, their tags) is kept between passes and refreshed only every
``refresh_every`` passes or when a task shows up for a service it has not described yet. In
steady state a pass over T tasks in a cluster costs ``ListTasks`` and ``DescribeTasks`` once per
100 tasks each: the batching floor. Clusters are scanned concurrently.

Start order (``core.start_order``): client tasks that started before an endpoint they depend on
existed are reported, and optionally their service is redeployed (one per cluster per pass).

HTTP probes (``core.probing``): services tagged ``cloudmap-reactor:http-check`` have their
registered instances probed each pass, after every cluster has been read and before anything is
decided, so the probing of the whole pass has one time bound. An instance that failed
``probe_failure_threshold`` probes in a row leaves the Cloud Map service it failed in.

Safety (``core.safety``): per service, the fail-open guard can hold back every removal (ECS
health and probes alike); every
``reconcile_every`` passes the Cloud Map instances of each service are listed (before the tasks)
and instances of tasks ECS reports stopping or stopped are removed; instances whose task ECS does
not know are only counted, never removed on one sighting.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime

from cloudmap_reactor.core.deregistration import deregister_task
from cloudmap_reactor.core.http_checks import FailedProbe, HttpChecks, ProbeProblem, failing_tasks
from cloudmap_reactor.core.model import Deregistration, EcsService, Outcome, Reason, TagScope, TaskSnapshot
from cloudmap_reactor.core.ports import AwsCallFailed, CloudMapRegistry, FleetReader, HttpProber, ServiceRedeployer
from cloudmap_reactor.core.probing import HttpCheck, ProbeResult, ProbeTarget
from cloudmap_reactor.core.safety import (
    RemovalPlan,
    is_leaving,
    is_unhealthy_and_running,
    looks_like_task_id,
    plan_unhealthy_removals,
)
from cloudmap_reactor.core.start_order import (
    StaleClient,
    choose_redeployment,
    created_dates,
    declared_dependencies,
    dependency_endpoints,
    find_stale,
)

ALL_CLUSTERS = "*"


@dataclass(frozen=True, slots=True)
class UnhealthyTask:
    task: TaskSnapshot
    service: EcsService


@dataclass(frozen=True, slots=True)
class FailOpen:
    """A service whose UNHEALTHY tasks were left registered by the fail-open guard."""

    service: EcsService
    plan: RemovalPlan


@dataclass(frozen=True, slots=True)
class OrphanInstance:
    """A Cloud Map instance whose id matches no task ECS knows (counted and logged, never removed)."""

    cluster_arn: str
    service_name: str
    cloudmap_service_id: str
    instance_id: str


@dataclass(frozen=True, slots=True)
class ClusterFailure:
    cluster_arn: str
    error: str


@dataclass(frozen=True, slots=True)
class ReconcileFailure:
    """Reconciliation or the start-order check of one service failed; the pass went on."""

    cluster_arn: str
    service_name: str
    error: str


@dataclass(frozen=True, slots=True)
class Redeployment:
    """A stale client this pass redeployed (or, in a dry run, would have)."""

    client: StaleClient
    dry_run: bool


@dataclass(slots=True)
class HealthPassResult:
    clusters_scanned: int = 0
    services_with_cloudmap: int = 0
    tasks_examined: int = 0
    services_described: int = 0
    reconciled_services: int = 0
    unhealthy: list[UnhealthyTask] = field(default_factory=list)
    deregistrations: list[Deregistration] = field(default_factory=list)
    fail_open: list[FailOpen] = field(default_factory=list)
    orphans: list[OrphanInstance] = field(default_factory=list)
    cluster_failures: list[ClusterFailure] = field(default_factory=list)
    reconcile_failures: list[ReconcileFailure] = field(default_factory=list)
    stale_clients: list[StaleClient] = field(default_factory=list)
    redeployments: list[Redeployment] = field(default_factory=list)
    probes: list[ProbeResult] = field(default_factory=list)
    failed_probes: list[FailedProbe] = field(default_factory=list)
    probe_problems: list[ProbeProblem] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        """Every in-scope cluster was read; the heartbeat metric is emitted only then."""
        return not self.cluster_failures

    def merge(self, other: HealthPassResult) -> None:
        self.clusters_scanned += other.clusters_scanned
        self.services_with_cloudmap += other.services_with_cloudmap
        self.tasks_examined += other.tasks_examined
        self.services_described += other.services_described
        self.reconciled_services += other.reconciled_services
        self.unhealthy.extend(other.unhealthy)
        self.deregistrations.extend(other.deregistrations)
        self.fail_open.extend(other.fail_open)
        self.orphans.extend(other.orphans)
        self.cluster_failures.extend(other.cluster_failures)
        self.reconcile_failures.extend(other.reconcile_failures)
        self.stale_clients.extend(other.stale_clients)
        self.redeployments.extend(other.redeployments)
        self.probes.extend(other.probes)
        self.failed_probes.extend(other.failed_probes)
        self.probe_problems.extend(other.probe_problems)


def tasks_by_service(
    tasks: Iterable[TaskSnapshot], services: Mapping[str, EcsService]
) -> dict[str, list[TaskSnapshot]]:
    """The tasks of each managed service (standalone tasks and other services' tasks left out)."""
    grouped: dict[str, list[TaskSnapshot]] = defaultdict(list)
    for task in tasks:
        name = task.service_name
        if name is not None and name in services:
            grouped[name].append(task)
    return grouped


# Service name -> Cloud Map service id -> instance id -> attributes, as listed this pass.
Registered = dict[str, dict[str, dict[str, dict[str, str]]]]


@dataclass
class _ClusterView:
    """The services of one cluster as last described; ``None`` marks a name ECS does not know."""

    services: dict[str, EcsService | None]
    described_on_pass: int

    def managed(self, scope: TagScope) -> dict[str, EcsService]:
        """Services registered in Cloud Map that the tags let this tool look after."""
        return {name: s for name, s in self.services.items() if s is not None and s.managed(scope)}


@dataclass
class _ClusterRead:
    """What the first phase of a pass read in one cluster, for the probing and deciding phases."""

    cluster_arn: str
    view: _ClusterView
    tasks: list[TaskSnapshot]
    registered: Registered
    reconcile: bool
    checks: dict[str, HttpCheck]  # service name -> its HTTP check (services that opted in)
    result: HealthPassResult
    # Once the tasks are read: the managed services (new ones included) and their tasks.
    services: dict[str, EcsService] = field(default_factory=dict)
    grouped: dict[str, list[TaskSnapshot]] = field(default_factory=dict)


class HealthScanner:
    """Runs health passes over the clusters in scope (every cluster when ``cluster_arns`` is empty).

    A pass has three phases: read every cluster (concurrently), probe the instances of services
    with an HTTP check (one bounded call to the prober), then decide and act per cluster.
    """

    def __init__(
        self,
        *,
        fleet: FleetReader,
        registry: CloudMapRegistry,
        cluster_arns: Sequence[str],
        dry_run: bool,
        refresh_every: int = 6,
        concurrency: int = 4,
        scope: TagScope = TagScope.OPT_OUT,
        min_healthy_percent: float = 50.0,
        reconcile_every: int = 6,
        redeployer: ServiceRedeployer | None = None,
        redeploy_stale_clients: bool = False,
        every_endpoint: bool = False,
        prober: HttpProber | None = None,
        probe_failure_threshold: int = 3,
        probe_allow_loopback: bool = False,
    ) -> None:
        self._fleet = fleet
        self._registry = registry
        self._configured_clusters = list(cluster_arns)
        self._dry_run = dry_run
        self._refresh_every = max(1, refresh_every)
        self._concurrency = max(1, concurrency)
        self._scope = scope
        self._min_healthy_percent = min_healthy_percent
        self._reconcile_every = reconcile_every
        self._redeployer = redeployer
        self._heal_all = redeploy_stale_clients
        self._every_endpoint = every_endpoint
        # None: probing is off (the poller has no network path to the tasks)
        self._http = (
            HttpChecks(prober, failure_threshold=probe_failure_threshold, allow_loopback=probe_allow_loopback)
            if prober
            else None
        )
        # What this invocation has learnt, kept between its passes:
        self._pass = -1
        self._clusters: list[str] | None = None
        self._clusters_listed_on = -1
        self._views: dict[str, _ClusterView] = {}
        # Cloud Map services each task was already taken out of: an UNHEALTHY task stays in ECS
        # until it is replaced, and is not deregistered again each pass.
        self._removed: dict[str, set[str]] = {}
        self._created: dict[str, datetime] = {}  # Cloud Map service id -> CreateDate
        self._redeployed: set[str] = set()  # service ARNs given a new deployment

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
            reads: list[_ClusterRead] = []
            for read in pool.map(self._read_cluster_safely, clusters):
                if isinstance(read, _ClusterRead):
                    reads.append(read)
                else:
                    result.merge(read)
            failing = self._probe(reads, result)
            for cluster_result in pool.map(lambda read: self._act_on_cluster(read, failing), reads):
                result.merge(cluster_result)
        return result

    def _clusters_in_scope(self) -> list[str]:
        if self._configured_clusters:
            return self._configured_clusters
        if self._clusters is None or self._pass - self._clusters_listed_on >= self._refresh_every:
            self._clusters = self._fleet.list_cluster_arns()
            self._clusters_listed_on = self._pass
        return self._clusters

    def _read_cluster_safely(self, cluster_arn: str) -> _ClusterRead | HealthPassResult:
        try:
            return self._read_cluster(cluster_arn)
        except AwsCallFailed as exc:
            self._views.pop(cluster_arn, None)  # describe it afresh next pass
            return HealthPassResult(cluster_failures=[ClusterFailure(cluster_arn=cluster_arn, error=str(exc))])

    def _read_cluster(self, cluster_arn: str) -> _ClusterRead:
        result = HealthPassResult(clusters_scanned=1)
        view = self._views.get(cluster_arn)
        if view is None or self._pass - view.described_on_pass >= self._refresh_every:
            described = self._fleet.describe_services(cluster_arn, self._fleet.list_service_arns(cluster_arn))
            result.services_described += len(described)
            view = _ClusterView({s.service_name: s for s in described}, described_on_pass=self._pass)
            self._views[cluster_arn] = view
        managed = view.managed(self._scope)
        read = _ClusterRead(cluster_arn, view, [], {}, reconcile=False, checks={}, result=result)
        if not managed:
            return read  # nothing here is registered in Cloud Map and in scope: no task reads needed

        read.reconcile = self._reconcile_every > 0 and self._pass % self._reconcile_every == 0
        if self._http is not None:
            checks, problems = self._http.checks(cluster_arn, managed)
            read.checks = checks
            result.probe_problems.extend(problems)
        listed = managed if read.reconcile else {name: managed[name] for name in read.checks}
        # Listed before the tasks: an instance registered after this by a task that starts after
        # the task listing would otherwise look like a leftover.
        read.registered = self._list_instances(cluster_arn, listed, result) if listed else {}

        read.tasks = self._fleet.describe_running_tasks(cluster_arn)
        result.tasks_examined = len(read.tasks)
        unknown = sorted({t.service_name for t in read.tasks if t.service_name and t.service_name not in view.services})
        if unknown:  # a service created since the last refresh
            found = {s.service_name: s for s in self._fleet.describe_services(cluster_arn, unknown)}
            result.services_described += len(found)
            view.services.update({name: found.get(name) for name in unknown})
        read.services = view.managed(self._scope)
        read.grouped = tasks_by_service(read.tasks, read.services)
        return read

    def _act_on_cluster(self, read: _ClusterRead, failing: set[tuple[str, str]]) -> HealthPassResult:
        """Decide and deregister, reconcile, check start order: the failures here are per service."""
        result = read.result
        if not read.services:
            return result
        result.services_with_cloudmap = len(read.services)
        for name, service in read.services.items():
            tasks = read.grouped.get(name, [])
            self._remove_unhealthy(service, tasks, result, probe_failed=failing_tasks(service, tasks, failing))
        if read.reconcile:
            result.reconciled_services = len(read.registered)
            self._reconcile(read.cluster_arn, read.registered, {t.task_id for t in read.tasks}, result)
        self._check_start_order(read.cluster_arn, read.view, read.tasks, result)
        return result

    def _probe(self, reads: Sequence[_ClusterRead], result: HealthPassResult) -> set[tuple[str, str]]:
        """Probe the pass's instances at once; the (Cloud Map service id, instance id) now over the threshold."""
        if self._http is None:
            return set()
        targets: list[tuple[ProbeTarget, EcsService]] = []
        for read in reads:
            for name, check in read.checks.items():
                if name in read.services:
                    found, problems = self._http.targets(
                        read.services[name],
                        check,
                        read.grouped.get(name, []),
                        read.registered.get(name, {}),
                        self._removed,
                    )
                    targets.extend(found)
                    read.result.probe_problems.extend(problems)
        probes = self._http.probe(targets)
        result.probes.extend(probes.results)
        result.failed_probes.extend(probes.failed)
        return probes.over_threshold

    def _check_start_order(
        self, cluster_arn: str, view: _ClusterView, tasks: list[TaskSnapshot], result: HealthPassResult
    ) -> None:
        """Find client tasks started before an endpoint they depend on existed; heal one client if asked."""
        described = [s for s in view.services.values() if s is not None]
        clients = {
            s.service_name: s
            for s in described
            if s.service_connect and s.in_scope(self._scope) and (self._every_endpoint or declared_dependencies(s))
        }
        if not clients:
            return
        grouped = tasks_by_service(tasks, clients)
        stale: list[StaleClient] = []
        for name, client in sorted(clients.items()):
            endpoints = dependency_endpoints(client, described, every_endpoint=self._every_endpoint)
            if not endpoints or name not in grouped:
                continue
            try:
                created = created_dates(endpoints, self._registry.service_created_at, self._created)
            except AwsCallFailed as exc:
                result.reconcile_failures.append(ReconcileFailure(cluster_arn, name, str(exc)))
                continue
            if found := find_stale(client, grouped[name], created):
                stale.append(found)
        result.stale_clients.extend(stale)
        choice = choose_redeployment(stale, heal_all=self._heal_all, already=self._redeployed)
        if choice is None or self._redeployer is None:
            return
        if not self._dry_run:
            try:
                self._redeployer.force_new_deployment(cluster_arn, choice.service.service_name)
            except AwsCallFailed as exc:
                result.reconcile_failures.append(ReconcileFailure(cluster_arn, choice.service.service_name, str(exc)))
                return
        self._redeployed.add(choice.service.service_arn)
        result.redeployments.append(Redeployment(client=choice, dry_run=self._dry_run))

    def _remove_unhealthy(
        self,
        service: EcsService,
        tasks: list[TaskSnapshot],
        result: HealthPassResult,
        *,
        probe_failed: Mapping[str, set[str]],
    ) -> None:
        """ECS-UNHEALTHY tasks leave every Cloud Map service; probe-failed ones the services they failed in."""
        removed = {arn for arn in (t.task_arn for t in tasks) if self._removed.get(arn)}
        plan = plan_unhealthy_removals(
            tasks,
            already_removed=removed,
            min_healthy_percent=self._min_healthy_percent,
            failing_probes=probe_failed.keys(),
        )
        result.unhealthy.extend(UnhealthyTask(task=t, service=service) for t in tasks if is_unhealthy_and_running(t))
        if plan.fail_open:
            result.fail_open.append(FailOpen(service=service, plan=plan))
            return
        for task in plan.remove:
            if is_unhealthy_and_running(task):
                self._deregister(service, task.task_arn, reason=Reason.UNHEALTHY, result=result)
            else:
                self._deregister(
                    service, task.task_arn, reason=Reason.PROBE_FAILED, result=result, only=probe_failed[task.task_arn]
                )
        # A task already out of one Cloud Map service that now fails its probes in another one: it
        # no longer counts as registered and healthy, so removing it changes nothing for the guard.
        for task_arn in sorted(removed & probe_failed.keys()):
            self._deregister(service, task_arn, reason=Reason.PROBE_FAILED, result=result, only=probe_failed[task_arn])

    def _deregister(
        self,
        service: EcsService,
        task_arn: str,
        *,
        reason: Reason,
        result: HealthPassResult,
        only: Iterable[str] | None = None,
    ) -> None:
        """Take the task out of the service's Cloud Map services (or ``only`` some), once per invocation."""
        done = self._removed.setdefault(task_arn, set())
        pending = set(service.cloudmap_service_ids if only is None else only) - done
        if not pending:
            return
        records = deregister_task(
            cluster_arn=service.cluster_arn,
            service_name=service.service_name,
            task_arn=task_arn,
            cloudmap_service_ids=pending,
            reason=reason,
            remover=self._registry,
            dry_run=self._dry_run,
        )
        done.update(r.cloudmap_service_id for r in records if r.outcome is not Outcome.FAILED)
        result.deregistrations.extend(records)

    def _list_instances(
        self, cluster_arn: str, services: Mapping[str, EcsService], result: HealthPassResult
    ) -> Registered:
        """The instances registered now in each service's Cloud Map services.

        A service whose instances cannot be listed is left out of this pass's reconciliation and
        probing (and reported).
        """

        def listing(service: EcsService) -> dict[str, dict[str, dict[str, str]]] | ReconcileFailure:
            try:
                return {sid: self._registry.list_instances(sid) for sid in sorted(service.cloudmap_service_ids)}
            except AwsCallFailed as exc:
                return ReconcileFailure(cluster_arn, service.service_name, str(exc))

        registered: Registered = {}
        with ThreadPoolExecutor(max_workers=self._concurrency) as pool:
            for name, listed in zip(services, pool.map(listing, services.values()), strict=True):
                if isinstance(listed, ReconcileFailure):
                    result.reconcile_failures.append(listed)
                else:
                    registered[name] = listed
        return registered

    def _reconcile(
        self,
        cluster_arn: str,
        registered: Registered,
        running_task_ids: set[str],
        result: HealthPassResult,
    ) -> None:
        """Remove instances of tasks ECS is stopping or has stopped; count the ones ECS does not know."""
        places: dict[str, list[tuple[str, str]]] = defaultdict(list)  # instance id -> (service, cloudmap id)
        for service_name, by_cloudmap_id in registered.items():
            for cloudmap_id, instance_ids in by_cloudmap_id.items():
                for instance_id in instance_ids.keys() - running_task_ids:
                    places[instance_id].append((service_name, cloudmap_id))
        task_like = sorted(i for i in places if looks_like_task_id(i))
        try:
            known = {t.task_id: t for t in self._fleet.describe_tasks(cluster_arn, task_like)} if task_like else {}
        except AwsCallFailed as exc:
            result.reconcile_failures.append(ReconcileFailure(cluster_arn, ALL_CLUSTERS, str(exc)))
            return
        view = self._views[cluster_arn]
        for instance_id, where in sorted(places.items()):
            task = known.get(instance_id)
            if task is None:
                result.orphans.extend(
                    OrphanInstance(cluster_arn, service_name, cloudmap_id, instance_id)
                    for service_name, cloudmap_id in where
                )
            elif is_leaving(task):
                for service_name, cloudmap_id in where:
                    service = view.services.get(service_name)
                    if service is None:
                        continue
                    self._deregister(
                        service, task.task_arn, reason=Reason.RECONCILED, result=result, only=[cloudmap_id]
                    )
            # else: a task that started after the listing, or runs elsewhere; nothing to do
