"""The HTTP-probe side of a health pass: which instances to probe, the probing, the failure counts.

The poller reads the clusters, hands this the opted-in services' registered instances, and gets
back each instance's consecutive failures; ``core.decide`` compares them with the threshold.
State kept here lasts one invocation, like the scanner's: the consecutive failures
per instance, and the problems already reported.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from cloudmap_reactor.core.decisions import InstanceKey, ProbeStreak
from cloudmap_reactor.core.model import EcsService, TaskSnapshot, is_running
from cloudmap_reactor.core.ports import HttpProber
from cloudmap_reactor.core.probing import (
    HttpCheck,
    InvalidHttpCheck,
    ProbeResult,
    ProbeTarget,
    ProbeVerdict,
    http_check_of,
    probe_target,
)


class ProblemKind(StrEnum):
    INVALID_CHECK = "invalid_check"  # the service's http-check tags are wrong: none of its instances is probed
    INVALID_TARGET = "invalid_target"  # one instance's registered address or port is refused or unusable


@dataclass(frozen=True, slots=True)
class ProbeProblem:
    """A service or instance that cannot be probed (bad tag, no address); reported once per invocation.

    ``kind`` ``invalid_target`` problems name their instance and are reported once per instance
    (count them as ``InvalidProbeTargets``); ``invalid_check`` ones once per service and error.
    """

    cluster_arn: str
    service_name: str
    error: str
    cloudmap_service_id: str | None = None
    instance_id: str | None = None
    kind: ProblemKind = ProblemKind.INVALID_CHECK


@dataclass(frozen=True, slots=True)
class FailedProbe:
    """A failed probe and how many in a row the instance has failed now."""

    result: ProbeResult
    service: EcsService
    consecutive_failures: int


@dataclass(slots=True)
class ProbeRound:
    """What one pass's probing found."""

    results: list[ProbeResult] = field(default_factory=list)
    failed: list[FailedProbe] = field(default_factory=list)
    streaks: dict[InstanceKey, ProbeStreak] = field(default_factory=dict)


class HttpChecks:
    """Probes the instances of services tagged ``cloudmap-reactor:http-check`` and counts failures."""

    def __init__(
        self, prober: HttpProber, *, allow_loopback: bool = False, history: ProbeHistory | None = None
    ) -> None:
        self._prober = prober
        self._history = history if history is not None else ProbeHistory()
        self._allow_loopback = allow_loopback  # PROBE_ALLOW_LOOPBACK: local runs only
        self._reported: set[tuple[str, ...]] = set()

    @property
    def history(self) -> ProbeHistory:
        return self._history

    def checks(
        self, cluster_arn: str, services: Mapping[str, EcsService]
    ) -> tuple[dict[str, HttpCheck], list[ProbeProblem]]:
        """The services to probe (by name); a service whose tags are wrong is reported and left alone."""
        checks: dict[str, HttpCheck] = {}
        problems: list[ProbeProblem] = []
        for name, service in services.items():
            try:
                check = http_check_of(service)
            except InvalidHttpCheck as exc:
                problems.extend(self._once(ProbeProblem(cluster_arn, name, str(exc))))
                continue
            if check is not None:
                checks[name] = check
        return checks, problems

    def targets(
        self,
        service: EcsService,
        check: HttpCheck,
        tasks: Iterable[TaskSnapshot],
        registered: Mapping[str, Mapping[str, Mapping[str, str]]],
        removed: Collection[InstanceKey],
    ) -> tuple[list[tuple[ProbeTarget, EcsService]], list[ProbeProblem]]:
        """The service's registered instances whose task runs and that were not taken out already.

        ``registered``: Cloud Map service id -> instance id -> attributes (the service's Cloud Map
        services are picked from it); ``removed``: instances taken out earlier in this invocation.
        """
        running = {t.task_id for t in tasks if is_running(t)}
        targets: list[tuple[ProbeTarget, EcsService]] = []
        problems: list[ProbeProblem] = []
        for sid in sorted(service.cloudmap_service_ids & registered.keys()):
            for instance_id, attributes in sorted(registered[sid].items()):
                if instance_id not in running or (sid, instance_id) in removed:
                    continue
                try:
                    target = probe_target(sid, instance_id, attributes, check, allow_loopback=self._allow_loopback)
                except InvalidHttpCheck as exc:  # the instance stays registered, unprobed, and is reported
                    problem = ProbeProblem(
                        service.cluster_arn,
                        service.service_name,
                        str(exc),
                        sid,
                        instance_id,
                        kind=ProblemKind.INVALID_TARGET,
                    )
                    problems.extend(self._once(problem))
                    continue
                targets.append((target, service))
        return targets, problems

    def probe(self, targets: Sequence[tuple[ProbeTarget, EcsService]]) -> ProbeRound:
        """Probe every target of the pass at once (failing and least recently probed first) and count."""
        owners = {target.key: service for target, service in targets}
        ordered = self._history.in_probing_order(target for target, _ in targets)
        results = self._prober.probe(ordered) if ordered else []
        self._history.record(results, still_probed=owners)
        failed = [
            FailedProbe(probe, owners[probe.target.key], self._history.failures(probe.target.key))
            for probe in results
            if probe.verdict is ProbeVerdict.FAILED
        ]
        return ProbeRound(results=results, failed=failed, streaks=self._history.streaks())

    def _once(self, problem: ProbeProblem) -> list[ProbeProblem]:
        """Report a service's wrong tags once per error, an instance's unusable address once per instance."""
        key: tuple[str, ...]
        if problem.kind is ProblemKind.INVALID_TARGET:
            key = (problem.kind, problem.cloudmap_service_id or "", problem.instance_id or "")
        else:
            key = (problem.kind, problem.cluster_arn, problem.service_name, problem.error)
        if key in self._reported:
            return []
        self._reported.add(key)
        return [problem]


class ProbeHistory:
    """Probe streaks per instance, kept for the container's life and saved in the ledger between containers.

    A skipped probe changes nothing; an instance no longer probed (its task left) is forgotten. It
    also orders the next pass's probes, which matters when a pass cannot probe everything in its
    time bound: instances on their way to a threshold first, then the longest unprobed.
    """

    def __init__(self, streaks: Mapping[InstanceKey, ProbeStreak] | None = None, *, assume_ready: bool = False) -> None:
        """``assume_ready``: the saved streaks could not be read; instances first seen in the first
        round are taken as ready (the failure threshold applies to them, not readiness)."""
        self._streaks: dict[InstanceKey, ProbeStreak] = dict(streaks or {})
        self._assume_ready = assume_ready
        self._probed_on: dict[InstanceKey, int] = {}  # key -> the record() call it was last probed in
        self._records = 0
        self.changed = False

    def record(self, results: Iterable[ProbeResult], *, still_probed: Iterable[InstanceKey]) -> None:
        """Count this round's probes; forget instances no longer probed in a Cloud Map service that was.

        Streaks of Cloud Map services not probed at all this round (a cluster skipped, a listing
        failed) are kept: losing them would make a long-ready instance look never ready.
        """
        self._records += 1
        kept = set(still_probed)
        probed_sids = {sid for sid, _ in kept}
        before = len(self._streaks)
        self._streaks = {key: s for key, s in self._streaks.items() if key in kept or key[0] not in probed_sids}
        self._probed_on = {key: n for key, n in self._probed_on.items() if key in kept or key[0] not in probed_sids}
        self.changed |= len(self._streaks) != before
        for result in results:
            if result.verdict is ProbeVerdict.SKIPPED:
                continue
            key = result.target.key
            self._probed_on[key] = self._records
            old = self._streaks.get(key, ProbeStreak(passed=self._assume_ready))
            if result.verdict is ProbeVerdict.HEALTHY:
                new = ProbeStreak(failures=0, successes=old.successes + 1, passed=True)
            else:
                new = ProbeStreak(failures=old.failures + 1, successes=0, passed=old.passed)
            self.changed |= new != old
            self._streaks[key] = new
        self._assume_ready = False

    def in_probing_order(self, targets: Iterable[ProbeTarget]) -> list[ProbeTarget]:
        """Failing instances first (most failures first), then the least recently probed (never: first)."""
        return sorted(targets, key=lambda t: (-self.failures(t.key), self._probed_on.get(t.key, 0), t.key))

    def failures(self, key: InstanceKey) -> int:
        return self._streaks.get(key, ProbeStreak()).failures

    def streaks(self) -> dict[InstanceKey, ProbeStreak]:
        return dict(self._streaks)
