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

import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field

from cloudmap_reactor.adapters import deadline as aws_clock
from cloudmap_reactor.adapters.deadline import aws_deadline
from cloudmap_reactor.config import Policy
from cloudmap_reactor.core.decide import decide_cluster
from cloudmap_reactor.core.decisions import (
    Action,
    ClusterSnapshot,
    Decision,
    Deregister,
    GuardVerdict,
    InstanceKey,
    OrphanInstance,
    ProbeStreak,
    QuarantineRecord,
    Redeploy,
    StopTask,
    UnhealthyTask,
)
from cloudmap_reactor.core.http_checks import FailedProbe, HttpChecks, ProbeProblem
from cloudmap_reactor.core.model import QUARANTINE_REASONS, Deregistration, EcsService
from cloudmap_reactor.core.ports import AwsCallFailed, QuarantineLedger
from cloudmap_reactor.core.probing import ProbeResult, ProbeTarget
from cloudmap_reactor.core.start_order import StaleClient
from cloudmap_reactor.poller.acting import Actor, Change, LedgerChange, Redeployment
from cloudmap_reactor.poller.memory import InvocationMemory
from cloudmap_reactor.poller.reading import (
    ALL_SERVICES,
    MISSING_CLUSTER,
    ClusterRead,
    ClusterSkipped,
    PassReader,
    ServiceReadFailure,
)

ALL_CLUSTERS = "*"
LEASE_MARGIN_SECONDS = 2.0
ACT_RESERVE_SECONDS = 5.0  # of a pass's time, kept for deciding and acting after the reads
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
    ledger: list[LedgerChange] = field(default_factory=list)
    quarantined: list[QuarantineRecord] = field(default_factory=list)  # the ledger's records at the pass's start
    ledger_unreadable: int = 0  # stored items that are not records: skipped, never acted on
    lease_elsewhere: bool = False  # another poller invocation holds the lease: this pass did nothing
    no_cluster_in_scope: bool = False  # ClusterTag matched nothing, or the account/region has no cluster
    warming_clusters: int = 0  # clusters read while some of their services were never described (cold start)
    now: float = 0.0  # epoch seconds at the pass's start

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
    def oldest_quarantine_seconds(self) -> float:
        return max((self.now - r.since for r in self.quarantined), default=0.0)

    @property
    def complete(self) -> bool:
        """Every in-scope cluster was read, and Cloud Map could be read: only then is the heartbeat emitted.

        A pass whose every instance listing failed (ListInstances denied, say) checked nothing that
        depends on Cloud Map, so it does not count as done, even though its ECS reads worked. Nor
        does a pass that found no cluster to look after (a ClusterTag with a typo, or the wrong
        region, would otherwise look like a healthy fleet), or one that still warms a cluster up.
        """
        cloudmap_unreadable = self.listings > 0 and self.listings_failed == self.listings
        partial = self.unread_clusters or self.warming_clusters or self.no_cluster_in_scope
        return not (partial or cloudmap_unreadable or self.lease_elsewhere)

    @property
    def unread_clusters(self) -> list[ClusterSkipped]:
        """Clusters that exist but could not be read (a missing cluster is a configuration error, reported once)."""
        return [s for s in self.skipped_clusters if s.reason != MISSING_CLUSTER]


class HealthScanner:
    """Runs the passes of one invocation (``actor`` None: decide only, as ``plan`` does)."""

    def __init__(
        self,
        *,
        reader: PassReader,
        policy: Policy,
        actor: Actor | None,
        http: HttpChecks | None = None,
        ledger: QuarantineLedger | None = None,
        owner: str = "",
        phase: Phase = untraced,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._phase = phase
        self._ledger = ledger
        self._owner = owner  # the lease holder's name: the invocation's request id
        self._clock = clock
        self._reader = reader
        self._policy = policy
        self._actor = actor
        self._http = http
        self.memory = InvocationMemory()

    def run_pass(self, *, deadline: float) -> HealthPassResult:
        """One pass over every cluster in scope; ``deadline`` (monotonic) bounds every AWS call in it."""
        self.memory.next_pass()
        self._reader.next_pass()
        result = HealthPassResult(now=self._clock())
        with self._phase("read") as annotate:
            try:
                with aws_deadline(deadline):
                    if not self._hold_lease():
                        result.lease_elsewhere = True
                        return result
                    if self._ledger is not None and self._actor is not None:
                        # Nothing of this pass may act after the lease it holds has expired.
                        deadline = min(deadline, aws_clock.now() + self.hold_lease_for() - LEASE_MARGIN_SECONDS)
                    clusters = self._reader.clusters()
                    result.no_cluster_in_scope = not clusters
                    if self._ledger is not None:
                        result.quarantined, result.ledger_unreadable = self._ledger.quarantined()
            except AwsCallFailed as exc:
                result.skipped_clusters.append(ClusterSkipped(ALL_CLUSTERS, "Error", str(exc)))
                return result
            reads: list[ClusterRead] = []
            # Reading stops early enough for acting on the clusters that were read: a hung cluster
            # cannot take the whole pass (and a quarter of a short one at most goes to acting).
            read_by = deadline - min(ACT_RESERVE_SECONDS, max(0.0, deadline - aws_clock.now()) / 4)
            found = self._reader.read_clusters(
                clusters, self.memory, deadline=read_by, http=self._http, quarantined=result.quarantined
            )
            for read in found:
                if isinstance(read, ClusterSkipped):
                    result.skipped_clusters.append(read)
                else:
                    reads.append(read)
                    _count_read(read, result)
            annotate("clusters", result.clusters_scanned)
            annotate("tasks", result.tasks_examined)
        with self._phase("probe") as annotate:
            streaks = self._probe(reads, result)
            annotate("probes", len(result.probes))
        with self._phase("decide and act") as annotate:
            for read in reads:
                self._decide_and_act(read, streaks, deadline, result)
            annotate("actions", len(result.decision.actions))
        return result

    def hold_lease_for(self) -> float:
        """How long a pass's lease lasts: past the next pass, so a live poller never loses it."""
        return max(30.0, 3 * self._policy.poll_interval_seconds)

    def release_lease(self) -> None:
        """At the end of the invocation: the next one acts at once, without waiting for an expiry."""
        if self._ledger is not None and self._owner:
            self._ledger.release_lease(self._owner)

    def _hold_lease(self) -> bool:
        if self._ledger is None or self._actor is None or not self._owner:
            return True  # no ledger (local runs), or only planning: nothing to coordinate
        return self._ledger.hold_lease(self._owner, self.hold_lease_for())

    def _probe(self, reads: list[ClusterRead], result: HealthPassResult) -> dict[InstanceKey, ProbeStreak]:
        """Probe registered and quarantined instances of the services with an HTTP check (one bounded call)."""
        if self._http is None:
            return {}
        quarantined = {r.key for r in result.quarantined}
        skip = self.memory.removed - quarantined  # a quarantined instance is probed: it may come back
        targets: list[tuple[ProbeTarget, EcsService]] = []
        for read in reads:
            for name, check in read.checks.items():
                if name not in read.managed:
                    continue
                service = read.managed[name]
                tasks = [t for t in read.tasks if t.service_name == name]
                instances = {sid: dict(ids) for sid, ids in read.instances.items()}
                for record in result.quarantined:
                    if record.cluster_arn == read.cluster_arn and record.service_name == name:
                        instances.setdefault(record.cloudmap_service_id, {})[record.instance_id] = dict(
                            record.attributes
                        )
                found, problems = self._http.targets(service, check, tasks, instances, skip)
                targets.extend(found)
                result.probe_problems.extend(problems)
        probes = self._http.probe(targets)
        result.probes.extend(probes.results)
        result.failed_probes.extend(probes.failed)
        return probes.streaks

    def _decide_and_act(
        self, read: ClusterRead, streaks: dict[InstanceKey, ProbeStreak], deadline: float, result: HealthPassResult
    ) -> None:
        quarantined = tuple(r for r in result.quarantined if r.cluster_arn == read.cluster_arn)

        def decide() -> Decision:
            return decide_cluster(
                self.snapshot(read, streaks, quarantined, result.now), self.memory.for_decisions(), self._policy
            )

        decision = decide()
        if decision.needs_listing:
            self._list_for_guard(read, decision.needs_listing, deadline, result)
            decision = decide()
        if self._confirm_services(read, decision, deadline, result):
            decision = decide()  # with the services as they are now
            if decision.needs_listing:  # their Cloud Map services changed
                self._list_for_guard(read, decision.needs_listing, deadline, result)
                decision = decide()
        decision.needs_listing.clear()  # what still could not be listed is reported, not guessed
        result.decision.merge(decision)
        if self._actor is None:
            return
        with aws_deadline(deadline):
            acted = self._actor.apply(decision)
        self.memory.remember(acted.deregistrations)
        # Back in Cloud Map: judged (probed, guarded, taken out again) like any other instance.
        self.memory.removed -= {
            c.record.key for c in acted.ledger if c.change is Change.RESTORED and not c.error and not c.dry_run
        }
        self.memory.redeployed.update(r.client.service.service_arn for r in acted.redeployments if r.error is None)
        # A later invocation forgets ``redeployed``: it must see the new deployment in the service itself.
        self._reader.refresh_soon(read.cluster_arn, (r.client.service.service_name for r in acted.redeployments))
        result.deregistrations.extend(acted.deregistrations)
        result.redeployments.extend(acted.redeployments)
        result.ledger.extend(acted.ledger)
        result.read_failures.extend(
            ServiceReadFailure(read.cluster_arn, r.client.service.service_name, r.error)
            for r in acted.redeployments
            if r.error is not None
        )

    def _list_for_guard(self, read: ClusterRead, sids: set[str], deadline: float, result: HealthPassResult) -> None:
        """The instances the fail-open guard needs, listed right before acting."""
        with aws_deadline(deadline):
            listed, failed = self._reader.list_instances(sids)
        result.listings += len(listed) + len(failed)
        result.listings_failed += len(failed)
        owners = {sid: s.service_name for s in read.managed.values() for sid in s.cloudmap_service_ids}
        result.read_failures.extend(
            ServiceReadFailure(read.cluster_arn, owners.get(sid, ALL_SERVICES), error) for sid, error in failed.items()
        )
        read.instances.update(listed)
        read.fresh.update(listed)

    def _confirm_services(
        self, read: ClusterRead, decision: Decision, deadline: float, result: HealthPassResult
    ) -> bool:
        """Services a running task would be acted on for, described again unless described this pass.

        Service views are kept over passes and invocations and refreshed in slices; a removal for
        health, probes or readiness, a redeployment or a stop rests on the service's tags, Cloud
        Map services and deployments, so those are read now (few services: actions are rare).
        Stopping tasks leave whatever the view says. If the read fails, those actions wait.
        """
        names = {name for action in decision.planned() if (name := _resting_on_service(action))}
        if not names:
            return False
        try:
            with aws_deadline(deadline):
                return self._reader.confirm(read, names)
        except AwsCallFailed as exc:
            result.read_failures.extend(ServiceReadFailure(read.cluster_arn, name, str(exc)) for name in sorted(names))
            decision.actions[:] = [a for a in decision.actions if _resting_on_service(a) is None]
            decision.held[:] = [h for h in decision.held if h.action is None or _resting_on_service(h.action) is None]
            return False

    def snapshot(
        self,
        read: ClusterRead,
        streaks: dict[InstanceKey, ProbeStreak],
        quarantined: tuple[QuarantineRecord, ...] = (),
        now: float = 0.0,
    ) -> ClusterSnapshot:
        """The decision module's view of one cluster's read (``doctor`` builds the same)."""
        return ClusterSnapshot(
            cluster_arn=read.cluster_arn,
            services=read.services,
            tasks=tuple(read.tasks),
            instances=read.instances,
            reconcile=read.reconcile,
            departed=read.departed,
            endpoints_created=self._reader.endpoints_created,
            probes=streaks,
            quarantined=quarantined,
            now=now,
            probed_services=frozenset(read.checks) if self._http is not None else frozenset(),
            fresh=frozenset(read.fresh),
        )


def _resting_on_service(action: Action) -> str | None:
    """The service whose current description an action on a running task rests on (None: a stopping task's)."""
    if isinstance(action, Deregister):
        return action.service_name if action.reason in QUARANTINE_REASONS else None
    if isinstance(action, Redeploy):
        return action.client.service.service_name
    if isinstance(action, StopTask):
        return action.record.service_name
    return None


def _count_read(read: ClusterRead, result: HealthPassResult) -> None:
    result.clusters_scanned += 1
    result.warming_clusters += read.warming
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
