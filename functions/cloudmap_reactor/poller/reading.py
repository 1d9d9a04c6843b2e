"""Reading AWS for a pass: clusters, services, tasks, Cloud Map instances. The only place with concurrency.

Each cluster is read on the cluster pool under its own deadline (``adapters.deadline``), so a
throttled or hung cluster ends at its deadline and is skipped for the pass while the others are
read and acted on. Leaf calls (describe batches, instance listings) run on the call pool and
never submit further work, so the two bounded pools cannot deadlock. What a service's read
failure costs is that service's part of the pass (reported), never the cluster's.

In steady state a cluster costs ``ListTasks`` and ``DescribeTasks`` once per 100 tasks each:
services are described only every ``service_refresh_passes`` passes or when a task of an unknown
service appears; instances are listed for reconciliation passes and probed services only, and
for the fail-open guard when it has removals to judge.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from concurrent.futures import Executor
from dataclasses import dataclass, field

from cloudmap_reactor.adapters.deadline import DeadlineExceeded, aws_deadline, submit_in_context
from cloudmap_reactor.config import Policy
from cloudmap_reactor.core.decisions import ClusterSnapshot
from cloudmap_reactor.core.http_checks import HttpChecks, ProbeProblem
from cloudmap_reactor.core.model import EcsService, TaskSnapshot, looks_like_task_id
from cloudmap_reactor.core.ports import (
    AwsCallFailed,
    CloudMapRegistry,
    ClusterNotFound,
    FleetReader,
    QuarantineLedger,
)
from cloudmap_reactor.core.probing import HttpCheck
from cloudmap_reactor.core.start_order import start_order_clients
from cloudmap_reactor.poller.memory import ClusterView, InvocationMemory

ALL_SERVICES = "*"  # a failure that concerns a whole cluster's reconciliation, not one service
MISSING_CLUSTER = "Missing"  # a configuration error, reported once: it does not make a pass incomplete
THROTTLING = ("Throttling", "TooManyRequests", "RequestLimitExceeded", "Rate exceeded")


@dataclass(frozen=True, slots=True)
class ClusterSkipped:
    """A cluster that could not be read this pass (nothing in it is decided or acted on)."""

    cluster_arn: str
    reason: str  # ``Deadline``, ``Throttled``, ``Error`` (the ClusterSkipped metric's dimension) or ``Missing``
    error: str


@dataclass(frozen=True, slots=True)
class ServiceReadFailure:
    """Part of a cluster that could not be read (instances, task states, endpoint dates); the pass went on."""

    cluster_arn: str
    service_name: str
    error: str


@dataclass
class ClusterRead:
    """What the read phase found in one cluster, before probing and deciding."""

    cluster_arn: str
    services: dict[str, EcsService]  # every described service (start order needs the unmanaged ones)
    managed: dict[str, EcsService]
    tasks: list[TaskSnapshot] = field(default_factory=list)
    instances: dict[str, dict[str, dict[str, str]]] = field(default_factory=dict)
    reconcile: bool = False
    departed: dict[str, TaskSnapshot] = field(default_factory=dict)
    checks: dict[str, HttpCheck] = field(default_factory=dict)  # service name -> its HTTP check
    failures: list[ServiceReadFailure] = field(default_factory=list)
    fresh: set[str] = field(default_factory=set)  # listed for the guard, right before acting
    listings: int = 0  # Cloud Map services whose instances were listed
    listings_failed: int = 0
    probe_problems: list[ProbeProblem] = field(default_factory=list)
    services_described: int = 0


class PassReader:
    """Reads clusters for the poller, ``plan`` and ``doctor`` alike."""

    def __init__(
        self,
        *,
        fleet: FleetReader,
        registry: CloudMapRegistry,
        policy: Policy,
        clusters: Executor,
        calls: Executor,
        discover_clusters: Callable[[], list[str]] | None = None,
    ) -> None:
        self._discover_clusters = discover_clusters or fleet.list_cluster_arns  # ClusterTag: the tagged ones
        self._fleet = fleet
        self._registry = registry
        self._policy = policy
        self._cluster_pool = clusters
        self._call_pool = calls

    def close(self) -> None:
        """Let the pools' threads go (a test's new container; Lambda just freezes them)."""
        self._cluster_pool.shutdown(wait=False, cancel_futures=True)
        self._call_pool.shutdown(wait=False, cancel_futures=True)

    def clusters(self, memory: InvocationMemory) -> list[str]:
        """The configured clusters, or every (tagged) cluster of the account (listed again every few passes)."""
        if self._policy.cluster_arns:
            return list(self._policy.cluster_arns)
        stale = memory.pass_number - memory.clusters_listed_on >= self._policy.service_refresh_passes
        if memory.clusters is None or stale:
            memory.clusters = self._discover_clusters()
            memory.clusters_listed_on = memory.pass_number
        return memory.clusters

    def read_clusters(
        self,
        clusters: Iterable[str],
        memory: InvocationMemory,
        *,
        deadline: float,
        http: HttpChecks | None = None,
        list_every_service: bool = False,
    ) -> list[ClusterRead | ClusterSkipped]:
        """Every cluster concurrently, each under ``deadline`` (monotonic seconds)."""

        def one(cluster_arn: str) -> ClusterRead | ClusterSkipped:
            try:
                with aws_deadline(deadline):
                    return self._read_cluster(cluster_arn, memory, http, list_every_service)
            except AwsCallFailed as exc:
                memory.views.pop(cluster_arn, None)  # describe it afresh next pass
                return ClusterSkipped(cluster_arn, _skip_reason(exc), str(exc))

        futures = [submit_in_context(self._cluster_pool, one, arn) for arn in clusters]
        return [future.result() for future in futures]

    def list_instances(self, sids: Iterable[str]) -> tuple[dict[str, dict[str, dict[str, str]]], dict[str, str]]:
        """Instances of each Cloud Map service, listed concurrently; (listed, sid -> error of those that failed)."""
        ordered = sorted(set(sids))

        def listing(sid: str) -> dict[str, dict[str, str]] | AwsCallFailed:
            try:
                return self._registry.list_instances(sid)
            except AwsCallFailed as exc:
                return exc

        results = [submit_in_context(self._call_pool, listing, sid) for sid in ordered]
        listed: dict[str, dict[str, dict[str, str]]] = {}
        failed: dict[str, str] = {}
        for sid, future in zip(ordered, results, strict=True):
            outcome = future.result()
            if isinstance(outcome, AwsCallFailed):
                failed[sid] = str(outcome)
            else:
                listed[sid] = outcome
        return listed, failed

    # -- one cluster ---------------------------------------------------------------------------
    def _read_cluster(
        self, cluster_arn: str, memory: InvocationMemory, http: HttpChecks | None, list_every_service: bool
    ) -> ClusterRead:
        view, described = self._view(cluster_arn, memory)
        read = ClusterRead(cluster_arn, view.described(), view.managed(self._policy.tag_scope))
        read.services_described = described
        if not read.managed and not list_every_service:
            return read  # nothing here is registered in Cloud Map and in scope: no task reads needed
        every = self._policy.reconcile_every_passes
        read.reconcile = list_every_service or (every > 0 and memory.pass_number % every == 0)
        if http is not None:
            read.checks, problems = http.checks(cluster_arn, read.managed)
            read.probe_problems.extend(problems)
        listed = list(read.services.values() if list_every_service else read.managed.values())
        if not read.reconcile:
            listed = [s for s in listed if s.service_name in read.checks]
        # Listed before the tasks: an instance registered after this by a task that starts after
        # the task listing would otherwise look like a leftover.
        self._list_for(read, listed)
        read.tasks = self._fleet.describe_running_tasks(cluster_arn)
        self._describe_new_services(read, view)
        if read.reconcile:
            self._describe_departed(read)
        self._date_endpoints(read, memory)
        return read

    def _view(self, cluster_arn: str, memory: InvocationMemory) -> tuple[ClusterView, int]:
        view = memory.views.get(cluster_arn)
        if view is not None and memory.pass_number - view.described_on_pass < self._policy.service_refresh_passes:
            return view, 0
        described = self._fleet.describe_services(cluster_arn, self._fleet.list_service_arns(cluster_arn))
        view = ClusterView({s.service_name: s for s in described}, described_on_pass=memory.pass_number)
        memory.views[cluster_arn] = view
        return view, len(described)

    def _list_for(self, read: ClusterRead, services: Iterable[EcsService]) -> None:
        wanted = {sid: s.service_name for s in services for sid in s.cloudmap_service_ids}
        listed, failed = self.list_instances(wanted)
        read.listings += len(listed) + len(failed)
        read.listings_failed += len(failed)
        read.instances.update(listed)
        read.failures.extend(ServiceReadFailure(read.cluster_arn, wanted[sid], error) for sid, error in failed.items())

    def _describe_new_services(self, read: ClusterRead, view: ClusterView) -> None:
        """A task of a service created since the last refresh: describe that service now."""
        unknown = sorted({t.service_name for t in read.tasks if t.service_name and t.service_name not in view.services})
        if not unknown:
            return
        found = {s.service_name: s for s in self._fleet.describe_services(read.cluster_arn, unknown)}
        read.services_described += len(found)
        view.services.update({name: found.get(name) for name in unknown})
        read.services = view.described()
        read.managed = view.managed(self._policy.tag_scope)

    def _describe_departed(self, read: ClusterRead) -> None:
        """What ECS says of registered instances whose task is not among the running ones."""
        running = {t.task_id for t in read.tasks}
        candidates = sorted({i for ids in read.instances.values() for i in ids} - running)
        task_like = [i for i in candidates if looks_like_task_id(i)]
        if not task_like:
            return
        try:
            read.departed = {t.task_id: t for t in self._fleet.describe_tasks(read.cluster_arn, task_like)}
        except AwsCallFailed as exc:
            if isinstance(exc, DeadlineExceeded):
                raise
            read.reconcile = False  # without the task states nothing can be reconciled safely
            read.failures.append(ServiceReadFailure(read.cluster_arn, ALL_SERVICES, str(exc)))

    def _date_endpoints(self, read: ClusterRead, memory: InvocationMemory) -> None:
        """Creation dates of the endpoints start-order clients depend on (each read once per invocation)."""
        if not read.managed:
            return
        clients = start_order_clients(
            read.services.values(), self._policy.tag_scope, every_endpoint=self._policy.stale_check_every_endpoint
        )
        for client, endpoints in clients:
            for sid in endpoints.values():
                if sid in memory.created:
                    continue
                try:
                    memory.created[sid] = self._registry.service_created_at(sid)
                except AwsCallFailed as exc:
                    if isinstance(exc, DeadlineExceeded):
                        raise
                    read.failures.append(ServiceReadFailure(read.cluster_arn, client.service_name, str(exc)))
                    break


def _skip_reason(exc: AwsCallFailed) -> str:
    if isinstance(exc, ClusterNotFound):
        return MISSING_CLUSTER
    if isinstance(exc, DeadlineExceeded):
        return "Deadline"
    text = f"{exc} {exc.__cause__ or ''}"
    return "Throttled" if any(word in text for word in THROTTLING) else "Error"


def read_service(
    fleet: FleetReader, registry: CloudMapRegistry, ledger: QuarantineLedger, service: EcsService
) -> ClusterSnapshot:
    """One service as the decision module reads a cluster: its tasks, its instances (listed now), its records.

    For the reactor's readiness events: a few calls for one service instead of a whole pass.
    """
    listed = {sid: registry.list_instances(sid) for sid in sorted(service.cloudmap_service_ids)}
    records, _ = ledger.quarantined()
    return ClusterSnapshot(
        cluster_arn=service.cluster_arn,
        services={service.service_name: service},
        tasks=tuple(fleet.describe_running_tasks(service.cluster_arn, service.service_name)),
        instances=listed,
        quarantined=tuple(
            r for r in records if r.cluster_arn == service.cluster_arn and r.service_name == service.service_name
        ),
        fresh=frozenset(listed),
    )
