"""One poller pass: read every cluster, probe, decide, act; and what the pass found, for logs and metrics.

A ``HealthScanner`` lives for one invocation (its memory lasts that long). A pass:

1. **read** every cluster concurrently, each under the pass deadline (``poller.reading``);
2. **probe** the instances of services with an HTTP check, in one bounded call for the pass;
3. **decide** per cluster with ``core.decide``; when the fail-open guard needs a Cloud Map
   service's instances it has not seen this pass, they are listed (right before acting, so a
   removal the reactor made meanwhile counts) and the cluster is decided again;
4. **act** (``poller.acting``), unless the scanner only plans (``plan`` uses this same path).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field

from cloudmap_reactor.adapters.deadline import aws_deadline
from cloudmap_reactor.config import Policy
from cloudmap_reactor.core.decide import decide_cluster
from cloudmap_reactor.core.decisions import ClusterSnapshot, Decision, GuardVerdict, OrphanInstance, UnhealthyTask
from cloudmap_reactor.core.http_checks import FailedProbe, HttpChecks, ProbeProblem
from cloudmap_reactor.core.model import Deregistration, EcsService
from cloudmap_reactor.core.ports import AwsCallFailed
from cloudmap_reactor.core.probing import ProbeResult, ProbeTarget
from cloudmap_reactor.core.start_order import StaleClient
from cloudmap_reactor.poller.acting import Actor, Redeployment
from cloudmap_reactor.poller.memory import InvocationMemory
from cloudmap_reactor.poller.reading import ALL_SERVICES, ClusterRead, ClusterSkipped, PassReader, ServiceReadFailure

ALL_CLUSTERS = "*"
Annotate = Callable[[str, int], None]
Phase = Callable[[str], AbstractContextManager[Annotate]]


@contextmanager
def untraced(_: str) -> Iterator[Annotate]:
    """The phase wrapper of ``plan`` and tests: no tracing (the functions pass ``observability.traced_phase``)."""
    yield lambda key, value: None


@dataclass(slots=True)
class HealthPassResult:
    """What one pass read, decided and did (summed over clusters)."""

    clusters_scanned: int = 0
    services_with_cloudmap: int = 0
    tasks_examined: int = 0
    services_described: int = 0
    reconciled_services: int = 0
    decision: Decision = field(default_factory=Decision)
    deregistrations: list[Deregistration] = field(default_factory=list)
    redeployments: list[Redeployment] = field(default_factory=list)
    skipped_clusters: list[ClusterSkipped] = field(default_factory=list)
    read_failures: list[ServiceReadFailure] = field(default_factory=list)
    probes: list[ProbeResult] = field(default_factory=list)
    failed_probes: list[FailedProbe] = field(default_factory=list)
    probe_problems: list[ProbeProblem] = field(default_factory=list)
    listings: int = 0
    listings_failed: int = 0

    @property
    def unhealthy(self) -> list[UnhealthyTask]:
        return self.decision.unhealthy

    @property
    def fail_open(self) -> list[GuardVerdict]:
        return self.decision.fail_open

    @property
    def orphans(self) -> list[OrphanInstance]:
        return self.decision.orphans

    @property
    def stale_clients(self) -> list[StaleClient]:
        return self.decision.stale_clients

    @property
    def complete(self) -> bool:
        """Every in-scope cluster was read, and Cloud Map could be read: only then is the heartbeat emitted.

        A pass whose every instance listing failed (ListInstances denied, say) checked nothing that
        depends on Cloud Map, so it does not count as done, even though its ECS reads worked.
        """
        cloudmap_unreadable = self.listings > 0 and self.listings_failed == self.listings
        return not self.skipped_clusters and not cloudmap_unreadable


class HealthScanner:
    """Runs the passes of one invocation (``actor`` None: decide only, as ``plan`` does)."""

    def __init__(
        self,
        *,
        reader: PassReader,
        policy: Policy,
        actor: Actor | None,
        http: HttpChecks | None = None,
        phase: Phase = untraced,
    ) -> None:
        self._phase = phase
        self._reader = reader
        self._policy = policy
        self._actor = actor
        self._http = http
        self.memory = InvocationMemory()

    def run_pass(self, *, deadline: float) -> HealthPassResult:
        """One pass over every cluster in scope; ``deadline`` (monotonic) bounds every AWS call in it."""
        self.memory.next_pass()
        result = HealthPassResult()
        with self._phase("read") as annotate:
            try:
                with aws_deadline(deadline):
                    clusters = self._reader.clusters(self.memory)
            except AwsCallFailed as exc:
                result.skipped_clusters.append(ClusterSkipped(ALL_CLUSTERS, "Error", str(exc)))
                return result
            reads: list[ClusterRead] = []
            for read in self._reader.read_clusters(clusters, self.memory, deadline=deadline, http=self._http):
                if isinstance(read, ClusterSkipped):
                    result.skipped_clusters.append(read)
                else:
                    reads.append(read)
                    _count_read(read, result)
            annotate("clusters", result.clusters_scanned)
            annotate("tasks", result.tasks_examined)
        with self._phase("probe") as annotate:
            failures = self._probe(reads, result)
            annotate("probes", len(result.probes))
        with self._phase("decide and act") as annotate:
            for read in reads:
                self._decide_and_act(read, failures, deadline, result)
            annotate("actions", len(result.decision.actions))
        return result

    def _probe(self, reads: list[ClusterRead], result: HealthPassResult) -> dict[tuple[str, str], int]:
        if self._http is None:
            return {}
        targets: list[tuple[ProbeTarget, EcsService]] = []
        for read in reads:
            for name, check in read.checks.items():
                if name in read.managed:
                    service = read.managed[name]
                    tasks = [t for t in read.tasks if t.service_name == name]
                    found, problems = self._http.targets(service, check, tasks, read.instances, self.memory.removed)
                    targets.extend(found)
                    result.probe_problems.extend(problems)
        probes = self._http.probe(targets)
        result.probes.extend(probes.results)
        result.failed_probes.extend(probes.failed)
        return probes.consecutive_failures

    def _decide_and_act(
        self, read: ClusterRead, failures: dict[tuple[str, str], int], deadline: float, result: HealthPassResult
    ) -> None:
        snapshot = self.snapshot(read, failures)
        decision = decide_cluster(snapshot, self.memory.for_decisions(), self._policy)
        if decision.needs_listing:
            with aws_deadline(deadline):
                listed, failed = self._reader.list_instances(decision.needs_listing)
            result.listings += len(listed) + len(failed)
            result.listings_failed += len(failed)
            owners = {sid: s.service_name for s in read.managed.values() for sid in s.cloudmap_service_ids}
            result.read_failures.extend(
                ServiceReadFailure(read.cluster_arn, owners.get(sid, ALL_SERVICES), error)
                for sid, error in failed.items()
            )
            read.instances.update(listed)
            read.fresh.update(listed)
            decision = decide_cluster(self.snapshot(read, failures), self.memory.for_decisions(), self._policy)
            decision.needs_listing.clear()  # what still could not be listed is reported above, not guessed
        result.decision.merge(decision)
        if self._actor is None:
            return
        with aws_deadline(deadline):
            acted = self._actor.apply(decision)
        self.memory.remember(acted.deregistrations)
        self.memory.redeployed.update(r.client.service.service_arn for r in acted.redeployments if r.error is None)
        result.deregistrations.extend(acted.deregistrations)
        result.redeployments.extend(acted.redeployments)
        result.read_failures.extend(
            ServiceReadFailure(read.cluster_arn, r.client.service.service_name, r.error)
            for r in acted.redeployments
            if r.error is not None
        )

    def snapshot(self, read: ClusterRead, failures: dict[tuple[str, str], int]) -> ClusterSnapshot:
        """The decision module's view of one cluster's read (``doctor`` builds the same)."""
        return ClusterSnapshot(
            cluster_arn=read.cluster_arn,
            services=read.services,
            tasks=tuple(read.tasks),
            instances=read.instances,
            reconcile=read.reconcile,
            departed=read.departed,
            endpoints_created=dict(self.memory.created),
            probe_failures=failures,
            fresh=frozenset(read.fresh),
        )


def _count_read(read: ClusterRead, result: HealthPassResult) -> None:
    result.clusters_scanned += 1
    result.services_described += read.services_described
    result.tasks_examined += len(read.tasks)
    result.listings += read.listings
    result.listings_failed += read.listings_failed
    result.read_failures.extend(read.failures)
    result.probe_problems.extend(read.probe_problems)
    if read.managed:
        result.services_with_cloudmap += len(read.managed)
    if read.reconcile:
        result.reconciled_services += sum(
            1 for s in read.managed.values() if s.cloudmap_service_ids <= read.instances.keys()
        )
