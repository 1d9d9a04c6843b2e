"""Reading AWS for a pass: clusters, services, tasks, Cloud Map instances. The only place with concurrency.

Each cluster is read on the cluster pool under its own deadline (``adapters.deadline``), so a
throttled or hung cluster ends at its deadline and is skipped for the pass while the others are
read and acted on. Leaf calls (describe batches, instance listings) run on the call pool and
never submit further work, so the two bounded pools cannot deadlock. What a service's read
failure costs is that service's part of the pass (reported), never the cluster's.

A pass reads only the tasks that can matter (issue #15: ECS's read quota is shared with
deployments and autoscaling). Per cluster:

* **Which services**: the managed ones (in scope, registered in Cloud Map) whose task states can
  change a decision this pass: a container health check in a task definition of a current
  deployment (``DescribeTaskDefinition`` once per revision per container; without one ECS
  always reports ``UNKNOWN``), an HTTP check, hold-until-healthy, quarantined instances, or a
  Cloud Map service shared with one of those (the fail-open guard counts every owner's tasks).
  On reconciliation passes, every managed service.
* **Which task ids**: those Cloud Map holds for these services (Service Connect registers a task
  under its id; the instances are listed anyway for probes, reconciliation and the guard), the
  ledger's quarantined tasks, the instances taken out in this invocation, and the tasks ECS
  listed running but unregistered last time. Describing them by id also tells reconciliation
  which registered tasks are stopping or gone (``departed``, ``MISSING``).
* **ECS's own listing** of the tasks: on reconciliation passes for every service that matters,
  otherwise for those just described by this pass's slice (their ``runningCount`` is fresh),
  and only for services that run more tasks (DescribeServices' ``runningCount``) than were
  found above, by the cheaper of the whole cluster (⌈T/100⌉ pages, and every listed task not
  found yet must be described to learn its service) and ``ListTasks(serviceName=...)`` per such
  service.
* **Services** (``_view``): kept per container (``ContainerMemory``), so a warm invocation does
  not describe them again. A cold container lists and describes a cluster's services at once
  (⌈S/100⌉ + ⌈S/10⌉ reads); after that each pass spends at most ``Policy.service_refresh_reads``
  (split between the clusters) on a *refresh cycle*: one ``ListServices`` (new services first,
  deleted ones dropped), then every service described again, oldest first. Before a running
  task is acted on, its service is described again unless this pass did (``confirm``).
* **Start order**: a client's tasks are read only while an endpoint it depends on is newer than
  its oldest deployment (no running task started before its deployment was created).

So a steady pass costs ⌈T_rel/100⌉ ``DescribeTasks`` per cluster and the refresh slice.
``doctor`` (``list_every_service``) still reads every task and every service's instances.
"""

from __future__ import annotations

import math
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Executor
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import datetime
from typing import TypeVar

from cloudmap_reactor.adapters.deadline import (
    DeadlineExceeded,
    aws_deadline,
    now,
    remaining_seconds,
    submit_in_context,
)
from cloudmap_reactor.adapters.ecs import DESCRIBE_SERVICES_BATCH
from cloudmap_reactor.config import Policy
from cloudmap_reactor.core.decide import held_until_healthy
from cloudmap_reactor.core.decisions import ClusterSnapshot, QuarantineRecord
from cloudmap_reactor.core.http_checks import HttpChecks, ProbeProblem
from cloudmap_reactor.core.model import RUNNING, EcsService, TaskSnapshot, looks_like_task_id, task_id
from cloudmap_reactor.core.ports import (
    AwsCallFailed,
    CloudMapRegistry,
    ClusterNotFound,
    FleetReader,
    QuarantineLedger,
)
from cloudmap_reactor.core.probing import HttpCheck
from cloudmap_reactor.core.start_order import start_order_clients
from cloudmap_reactor.poller.memory import ClusterView, ContainerMemory, InvocationMemory

ALL_SERVICES = "*"  # a failure that concerns a whole cluster's reconciliation, not one service
MISSING_CLUSTER = "Missing"  # a configuration error, reported once: it does not make a pass incomplete
CLUSTER_WIDE = "cluster"  # ClusterRead.listing: ListTasks over the whole cluster
BY_SERVICE = "services"  # ListTasks(serviceName=...) per service that matters
TASK_DEFINITION_LOOKUPS_PER_PASS = 20  # DescribeTaskDefinition calls per pass (all clusters), at most
TASK_DEFINITION_CACHE = 10_000  # task definitions remembered per container
T = TypeVar("T")
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
    listing: str = ""  # how ECS's tasks were listed this pass: CLUSTER_WIDE, BY_SERVICE or not at all
    probe_problems: list[ProbeProblem] = field(default_factory=list)
    services_described: int = 0
    warming: bool = False  # some services of the cluster were never described yet (a cold view)


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
        self._health_checks: dict[str, bool] = {}  # task definition ARN -> any container health check
        self._lookups_left = 0  # task definitions this pass may still describe
        self._lookups_lock = threading.Lock()
        self.memory = ContainerMemory()  # services and clusters, kept over warm invocations

    def next_pass(self) -> int:
        """A new pass of the container (every invocation's passes count: service views age by them)."""
        return self.memory.next_pass()

    def refresh_soon(self, cluster_arn: str, names: Iterable[str]) -> None:
        """Describe these services first in the cluster's next slice (a redeployed client, say)."""
        if (view := self.memory.views.get(cluster_arn)) is not None:
            view.urgent.update(n for n in names if n in view.described_on)

    def confirm(self, read: ClusterRead, names: Iterable[str]) -> bool:
        """Describe now the named services not described this pass; whether any was (then decide again).

        Before the pass acts on a running task (a removal for health, probes or readiness, a
        redeployment, a stop), what the decision used of its service (tags, Cloud Map services,
        deployments) is read again, so a view from an earlier pass never causes an action.
        """
        view = self.memory.views.get(read.cluster_arn)
        if view is None:
            return False
        fresh = view.fresh(self.memory.pass_number)
        stale = sorted({n for n in names if n in view.services} - fresh)
        if not stale:
            return False
        view.update(stale, self._fleet.describe_services(read.cluster_arn, stale), self.memory.pass_number)
        read.services_described += len(stale)
        read.services = view.described()
        read.managed = view.managed(self._policy.tag_scope)
        return True

    @property
    def endpoints_created(self) -> dict[str, datetime]:
        return dict(self.memory.created)

    def close(self) -> None:
        """Let the pools' threads go (a test's new container; Lambda just freezes them)."""
        self._cluster_pool.shutdown(wait=False, cancel_futures=True)
        self._call_pool.shutdown(wait=False, cancel_futures=True)

    def clusters(self) -> list[str]:
        """The configured clusters, or every (tagged) cluster of the account (listed again every few passes)."""
        if self._policy.cluster_arns:
            return list(self._policy.cluster_arns)
        memory = self.memory
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
        quarantined: Sequence[QuarantineRecord] = (),
    ) -> list[ClusterRead | ClusterSkipped]:
        """Every cluster concurrently, each under ``deadline`` (monotonic seconds).

        ``quarantined``: the ledger's records (their tasks are read though Cloud Map no longer holds them).
        """

        self._lookups_left = TASK_DEFINITION_LOOKUPS_PER_PASS
        clusters = list(clusters)
        if not list_every_service:  # views of clusters no longer in scope are dropped
            self.memory.views = {arn: v for arn, v in self.memory.views.items() if arn in clusters}
        # The pass's share of the read budget for refreshing services, split evenly between clusters.
        allowance = max(1, self._policy.service_refresh_reads // max(1, len(clusters)))

        def one(cluster_arn: str) -> ClusterRead | ClusterSkipped:
            records = [r for r in quarantined if r.cluster_arn == cluster_arn]
            try:
                with aws_deadline(deadline):
                    return self._read_cluster(
                        cluster_arn, memory, http, list_every_service, records, allowance=allowance
                    )
            except AwsCallFailed as exc:
                if isinstance(exc, ClusterNotFound):
                    self.memory.views.pop(cluster_arn, None)
                # Otherwise the view stays: what this pass could not describe is still due first.
                return ClusterSkipped(cluster_arn, _skip_reason(exc), str(exc))

        futures = [submit_in_context(self._cluster_pool, one, arn) for arn in clusters]
        return [future.result() for future in futures]

    def list_instances(self, sids: Iterable[str]) -> tuple[dict[str, dict[str, dict[str, str]]], dict[str, str]]:
        """Instances of each Cloud Map service, listed concurrently; (listed, sid -> error of those that failed)."""
        listed, failed = self._concurrently(self._registry.list_instances, sorted(set(sids)))
        return listed, {sid: str(error) for sid, error in failed.items()}

    def _concurrently(
        self, call: Callable[[str], T], keys: Sequence[str]
    ) -> tuple[dict[str, T], dict[str, AwsCallFailed]]:
        """``call`` for each key on the call pool; (key -> result, key -> failure of the calls that failed)."""

        def one(key: str) -> T | AwsCallFailed:
            try:
                return call(key)
            except AwsCallFailed as exc:
                return exc

        futures = [submit_in_context(self._call_pool, one, key) for key in keys]
        done: dict[str, T] = {}
        failed: dict[str, AwsCallFailed] = {}
        for key, future in zip(keys, futures, strict=True):
            outcome = future.result()
            if isinstance(outcome, AwsCallFailed):
                failed[key] = outcome
            else:
                done[key] = outcome
        return done, failed

    # -- one cluster ---------------------------------------------------------------------------
    def _read_cluster(
        self,
        cluster_arn: str,
        memory: InvocationMemory,
        http: HttpChecks | None,
        list_every_service: bool,
        quarantined: Sequence[QuarantineRecord],
        *,
        allowance: int,
    ) -> ClusterRead:
        view, described, failures = self._view(cluster_arn, allowance)
        read = ClusterRead(cluster_arn, view.described(), view.managed(self._policy.tag_scope))
        read.services_described = described
        read.warming = view.warming()
        read.failures.extend(failures)
        if list_every_service:
            return self._read_everything(read, view)
        if not read.managed:
            return read  # nothing here is registered in Cloud Map and in scope: no task reads needed
        every = self._policy.reconcile_every_passes
        read.reconcile = every > 0 and memory.pass_number % every == 0
        if http is not None:
            read.checks, problems = http.checks(cluster_arn, read.managed)
            read.probe_problems.extend(problems)
        self._date_endpoints(read)
        needed = self._needing_tasks(read, quarantined)
        self._list_for(read, [read.managed[name] for name in sorted(needed)])
        wanted = self._known_task_ids(read, view, needed, quarantined, memory)
        wanted |= self._start_order_tasks(read)
        found = self._fleet.describe_tasks(cluster_arn, sorted(wanted)) if wanted else []
        # ECS's own listing, for running tasks Cloud Map does not hold: on reconciliation passes
        # for every service that matters, otherwise for those just described (fresh runningCount).
        counted = needed if read.reconcile else needed & view.fresh(self.memory.pass_number)
        census = bool(counted)
        if census and (more := self._list_tasks(read, view, counted, found) - wanted):
            found += self._fleet.describe_tasks(cluster_arn, sorted(more))
        read.tasks = [t for t in found if t.desired_status == RUNNING]
        read.departed = {t.task_id: t for t in found if t.desired_status != RUNNING}
        running = {t.task_id for t in read.tasks}
        if census:
            registered = {i for ids in read.instances.values() for i in ids}
            view.unregistered = {
                t.task_id: t.service_name
                for t in read.tasks
                if t.service_name in needed and t.task_id not in registered
            }
            self._describe_new_services(read, view)
        else:
            view.unregistered = {i: name for i, name in view.unregistered.items() if i in running}
        return read

    def _read_everything(self, read: ClusterRead, view: ClusterView) -> ClusterRead:
        """``doctor``: every task of the cluster and every service's instances, whatever they cost (one-off)."""
        read.reconcile = True
        self._list_for(read, read.services.values())
        read.tasks = self._fleet.describe_running_tasks(read.cluster_arn)
        read.listing = CLUSTER_WIDE
        self._describe_new_services(read, view)
        self._describe_departed(read)
        self._date_endpoints(read)
        return read

    def _needing_tasks(self, read: ClusterRead, quarantined: Sequence[QuarantineRecord]) -> set[str]:
        """The managed services whose task states can matter this pass.

        All of them on a reconciliation pass; otherwise those that can turn UNHEALTHY (a container
        health check), are probed, are held until healthy, or have quarantined instances, and any
        service sharing a Cloud Map service with one of those (the fail-open guard counts its tasks).
        A service with none of these has tasks that ECS always reports UNKNOWN: nothing to read.
        """
        managed = read.managed
        checked = {name for name, service in sorted(managed.items()) if self._health_checked(service, read)}
        if read.reconcile:
            return set(managed)
        held = {r.service_name for r in quarantined}
        needed = checked | {
            name
            for name, service in managed.items()
            if name in read.checks or name in held or held_until_healthy(service, self._policy)
        }
        sids = {sid for name in needed for sid in managed[name].cloudmap_service_ids}
        return needed | {name for name, s in managed.items() if s.cloudmap_service_ids & sids}

    def _health_checked(self, service: EcsService, read: ClusterRead) -> bool:
        """Whether a task of the service can be UNHEALTHY; True when not known yet (read it, as before).

        A Service Connect service always can: ECS adds its Service Connect agent to every task as
        an essential container with a health check of its own, which the task definition does not
        show, and a failing agent makes the task UNHEALTHY. Only classic service discovery
        (``serviceRegistries``) tasks with no container health check are UNKNOWN for ever.
        Task definitions are immutable per revision: each is described once per container, and at
        most ``TASK_DEFINITION_LOOKUPS_PER_PASS`` per pass over all clusters (a cold container with
        thousands of services spreads them over passes instead of stalling one).
        """
        if service.service_connect or not service.task_definitions:
            return True
        for arn in service.task_definitions:
            known = self._health_checks.get(arn)
            if known is None:
                with self._lookups_lock:
                    if self._lookups_left <= 0:
                        return True
                    self._lookups_left -= 1
                try:
                    known = self._fleet.container_health_check(arn)
                except AwsCallFailed as exc:
                    if isinstance(exc, DeadlineExceeded):
                        raise
                    # Unknown: read its tasks, and ask again next pass; said, so that a denied call is seen.
                    read.failures.append(
                        ServiceReadFailure(read.cluster_arn, service.service_name, f"task definition {arn}: {exc}")
                    )
                    return True
                if len(self._health_checks) >= TASK_DEFINITION_CACHE:
                    self._health_checks.clear()
                self._health_checks[arn] = known
            if known:
                return True
        return False

    def _known_task_ids(
        self,
        read: ClusterRead,
        view: ClusterView,
        needed: set[str],
        quarantined: Sequence[QuarantineRecord],
        memory: InvocationMemory,
    ) -> set[str]:
        """The tasks that matter, as far as known without ECS: Service Connect registers a task under its id.

        The registered instances of the services that matter, the ledger's quarantined tasks, the
        instances taken out in this invocation, and the tasks that ran unregistered at the last listing.
        """
        sids = {sid for name in needed for sid in read.managed[name].cloudmap_service_ids}
        ids = {i for sid in sids for i in read.instances.get(sid, {})}
        ids |= {r.instance_id for r in quarantined if r.service_name in read.managed}
        ids |= {i for sid, i in memory.removed if sid in sids}
        ids |= {i for i, name in view.unregistered.items() if name in needed}
        return {i for i in ids if looks_like_task_id(i)}

    def _list_tasks(
        self, read: ClusterRead, view: ClusterView, needed: set[str], found: Sequence[TaskSnapshot]
    ) -> set[str]:
        """ECS's listing of running tasks that matter and Cloud Map does not hold, by the cheaper way.

        Only services that run more tasks (``runningCount``) than were found through Cloud Map
        and the ledger are listed at all (``read.listing`` says how, or is empty). Listing each
        of them costs Σ⌈Tₛ/100⌉ pages, and describing what is new ⌈(ΣTₛ - found)/100⌉ calls; the
        whole cluster ⌈T/100⌉ pages, and every listed task not found yet must be described to learn
        its service. T is at least the sum over every service, and at least what the cluster listed
        last time (standalone tasks belong to no service).
        """
        seen: Counter[str] = Counter(t.service_name for t in found if t.desired_status == RUNNING and t.service_name)
        short = [read.managed[n] for n in sorted(needed) if read.managed[n].running_count > seen[n]]
        if not short:
            return set()
        missing = sum(s.running_count - seen[s.service_name] for s in short)
        total = max(sum(s.running_count for s in read.services.values()), view.tasks_listed)
        by_service = sum(_pages(s.running_count) for s in short) + _pages(missing)
        if _pages(total) + _pages(total - len(found)) < by_service:
            read.listing = CLUSTER_WIDE
            arns = self._fleet.list_task_arns(read.cluster_arn)
            view.tasks_listed = len(arns)
            return {task_id(arn) for arn in arns}
        read.listing = BY_SERVICE
        return self._list_service_tasks(read, [s.service_name for s in short])

    def _start_order_tasks(self, read: ClusterRead) -> set[str]:
        """Tasks of start-order clients that may be stale: an endpoint is newer than the client's oldest deployment.

        No running task started before its deployment was created, so a client whose deployments
        all came after every endpoint it depends on has no stale task, and nothing to read.
        """
        clients = start_order_clients(
            read.services.values(), self._policy.tag_scope, every_endpoint=self._policy.stale_check_every_endpoint
        )
        created = self.memory.created
        suspects = [client.service_name for client, endpoints in clients if _may_be_stale(client, endpoints, created)]
        return self._list_service_tasks(read, suspects) if suspects else set()

    def _list_service_tasks(self, read: ClusterRead, names: Sequence[str]) -> set[str]:
        """Each named service's task ids (concurrently); a failed listing is that service's failure alone."""
        listed, failed = self._concurrently(lambda name: self._fleet.list_task_arns(read.cluster_arn, name), names)
        if late := next((e for e in failed.values() if isinstance(e, DeadlineExceeded)), None):
            raise late  # not one service's failure: the cluster's time is up
        read.failures.extend(ServiceReadFailure(read.cluster_arn, name, str(e)) for name, e in failed.items())
        return {task_id(arn) for arns in listed.values() for arn in arns}

    def _view(self, cluster_arn: str, allowance: int) -> tuple[ClusterView, int, list[ServiceReadFailure]]:
        """The cluster's services, refreshed by one slice of ``allowance`` ECS reads (a warm-up when cold).

        A refresh cycle lists the services (⌈S/100⌉ pages) and then describes each (10 a call)
        over the next passes, services never described first, then the oldest; a new cycle starts
        when the last one ended and ``service_refresh_passes`` passed since it started. A cluster
        without a view (a cold container, a new cluster) is listed at once (a failure skips the
        cluster) and then warmed up: its services never described are described beyond the
        allowance, for at most half the time left to the pass's reads (``_warm_up``), and what was
        described is kept, so a cluster of thousands of services is known after a pass or two
        instead of being read again from nothing by every pass that runs out of time. A warm view
        is used as it is when part of its slice fails (actions still confirm their services): each
        failed call is reported, and its 10 services wait for the next cycle, so one failing
        service cannot stall the cycle. Returns the view, how many services were described, and
        the failures.
        """
        now = self.memory.pass_number
        view = self.memory.views.get(cluster_arn)
        reads = allowance
        if view is None:
            view = ClusterView({})
            view.relist(map(_service_name, self._fleet.list_service_arns(cluster_arn)), now)
            self.memory.views[cluster_arn] = view
        elif not view.due() and now - view.listed_on >= self._policy.service_refresh_passes:
            try:
                names = self._fleet.list_service_arns(cluster_arn)
            except AwsCallFailed as exc:
                if isinstance(exc, DeadlineExceeded | ClusterNotFound):
                    raise
                return view, 0, [ServiceReadFailure(cluster_arn, ALL_SERVICES, f"listing services: {exc}")]
            reads -= _pages(len(names))
            view.relist(map(_service_name, names), now)
        if view.warming():
            return self._warm_up(cluster_arn, view)
        # At least one call when anything is due, so a small allowance still moves the cycle on.
        batch = view.due()[: max(1, reads) * DESCRIBE_SERVICES_BATCH]
        described, failures = self._describe_into(view, cluster_arn, batch)
        return view, described, failures

    def _warm_up(self, cluster_arn: str, view: ClusterView) -> tuple[ClusterView, int, list[ServiceReadFailure]]:
        """Describe the services never described, for at most half the time left: the rest of the pass reads the others.

        Calls cut by that half-time deadline leave their services due for the next pass (not a
        failure); the pass goes on with the services known so far, and says how far the warm-up got.
        """
        left = remaining_seconds()
        with aws_deadline(now() + left / 2) if left is not None else nullcontext():
            described, failures = self._describe_into(view, cluster_arn, view.due(), cut_short_ok=left is not None)
        if view.warming():
            known = len(view.described_on) - len(view.due())
            failures.append(
                ServiceReadFailure(
                    cluster_arn,
                    ALL_SERVICES,
                    f"warming up after a cold start: {known} of {len(view.described_on)} services described, "
                    "the others are looked after from the next pass that describes them",
                )
            )
        return view, described, failures

    def _describe_into(
        self, view: ClusterView, cluster_arn: str, names: Sequence[str], *, cut_short_ok: bool = False
    ) -> tuple[int, list[ServiceReadFailure]]:
        """Describe ``names`` (10 a call, concurrently) into the view; (services described, failures).

        ``cut_short_ok``: calls that ran into the current deadline leave their services due, quietly.
        """
        calls = {str(i): names[i : i + DESCRIBE_SERVICES_BATCH] for i in range(0, len(names), DESCRIBE_SERVICES_BATCH)}
        found, failed = self._concurrently(
            lambda key: self._fleet.describe_services(cluster_arn, calls[key]), list(calls)
        )
        for key, services in found.items():
            view.update(calls[key], services, self.memory.pass_number)
        failures: list[ServiceReadFailure] = []
        for key, error in failed.items():
            if isinstance(error, ClusterNotFound) or (isinstance(error, DeadlineExceeded) and not cut_short_ok):
                raise error
            if isinstance(error, DeadlineExceeded):
                continue  # the warm-up's own deadline: still due, described by the next pass
            view.deferred.update(calls[key])
            what = f"describing services {calls[key][0]} to {calls[key][-1]}"
            failures.append(ServiceReadFailure(cluster_arn, ALL_SERVICES, f"{what}: {error}"))
        return sum(len(calls[key]) for key in found), failures

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
        view.update(unknown, self._fleet.describe_services(read.cluster_arn, unknown), self.memory.pass_number)
        read.services_described += len(unknown)
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

    def _date_endpoints(self, read: ClusterRead) -> None:
        """Creation dates of the endpoints start-order clients depend on (each read once per container)."""
        if not read.managed:
            return
        clients = start_order_clients(
            read.services.values(), self._policy.tag_scope, every_endpoint=self._policy.stale_check_every_endpoint
        )
        for client, endpoints in clients:
            for sid in endpoints.values():
                if sid in self.memory.created:
                    continue
                try:
                    self.memory.remember_created(sid, self._registry.service_created_at(sid))
                except AwsCallFailed as exc:
                    if isinstance(exc, DeadlineExceeded):
                        raise
                    read.failures.append(ServiceReadFailure(read.cluster_arn, client.service_name, str(exc)))
                    break


def _pages(tasks: int) -> int:
    """Calls to list or describe ``tasks`` tasks, 100 per call (a listing costs one call even when empty)."""
    return max(1, math.ceil(tasks / 100))


def refresh_cycle_passes(services: int, reads: int, every: int = 1) -> int:
    """Passes one refresh cycle of a warm cluster takes: a new service is described within this many.

    ``reads``: the cluster's slice (``Policy.service_refresh_reads`` / clusters); ``every``:
    ``service_refresh_passes``. The listing pass spends ⌈S/100⌉ reads on ``ListServices`` and
    describes what is left of its slice (at least 10 services, new ones first); every later pass
    describes ``10 x reads``, until all ⌈S/10⌉ calls are made.
    """
    calls = math.ceil(services / DESCRIBE_SERVICES_BATCH)
    first = max(1, reads - _pages(services))
    return max(every, 1 + math.ceil(max(0, calls - first) / max(1, reads)))


def _service_name(arn_or_name: str) -> str:
    """``arn:aws:ecs:…:service/cluster/name`` (or the old ``service/name``) → ``name``."""
    return arn_or_name.rsplit("/", 1)[-1]


def _may_be_stale(client: EcsService, endpoints: Mapping[str, str], created: Mapping[str, datetime]) -> bool:
    """An endpoint of ``client`` was created after its oldest deployment (unknown dates: decided elsewhere)."""
    dates = [d for sid in endpoints.values() if (d := created.get(sid)) is not None]
    if len(dates) < len(endpoints):
        return False  # a creation date could not be read: reported, and the client is not judged
    return client.deployed_since is None or max(dates) > client.deployed_since


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
