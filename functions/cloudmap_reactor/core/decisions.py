"""What the decision module reads (a snapshot) and what it returns (actions, holds, findings).

A ``ClusterSnapshot`` is everything one pass read about one cluster; ``Memory`` is what earlier
passes of the same invocation did. ``core.decide`` turns them into a ``Decision``: every action
carries the ``Reason`` operators see in metrics and the ``Rule`` that produced it; everything held
back says why. The poller acts on ``Decision.actions``; ``plan`` and ``doctor`` only show them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from cloudmap_reactor.core.model import EcsService, Reason, TaskSnapshot, task_id
from cloudmap_reactor.core.start_order import StaleClient

InstanceKey = tuple[str, str]  # (Cloud Map service id, instance id); the instance id is the task id
Instances = Mapping[str, Mapping[str, Mapping[str, str]]]  # Cloud Map service id -> instance id -> attributes


@dataclass(frozen=True, slots=True)
class ProbeStreak:
    """One instance's recent probes: consecutive failures or successes, and whether it ever passed."""

    failures: int = 0
    successes: int = 0
    passed: bool = False  # passed at least once: it has been ready (readiness: core.decide)


class Rule(StrEnum):
    """The rule behind an action or a hold (each is one function in ``core.decide``)."""

    STOP_EVENT = "stop-event"  # ECS decided to stop the task (reactor)
    ECS_UNHEALTHY = "ecs-unhealthy"  # DescribeTasks healthStatus UNHEALTHY while running
    PROBE_THRESHOLD = "probe-threshold"  # failed ProbeFailureThreshold HTTP probes in a row
    NOT_READY_PROBE = "not-ready-probe"  # failed its service's HTTP check before ever passing it
    NOT_READY_HEALTH = "hold-until-healthy"  # running, but ECS does not report it HEALTHY yet (opt-in)
    RECOVERED = "recovered"  # quarantined, and healthy again: registered again with its attributes
    TASK_GONE = "task-gone"  # quarantined, and ECS is stopping it or no longer knows it: record forgotten
    REPLACE = "replace"  # quarantined for failed probes longer than ReplaceAfterSeconds: stopped
    RECONCILE = "reconcile"  # a registered instance whose task ECS is stopping or has stopped
    START_ORDER = "start-order"  # client tasks started before an endpoint they depend on existed


class Hold(StrEnum):
    """Why something that could have been done was not."""

    DRY_RUN = "dry-run"
    RETURN_OFF = "return-on-recovery-off"
    FAIL_OPEN = "fail-open"
    NOT_STOPPING = "not-stopping"
    NOT_A_SERVICE = "not-a-service-task"
    CLUSTER_OUT_OF_SCOPE = "cluster-out-of-scope"
    SERVICE_NOT_FOUND = "service-not-found"
    NO_CLOUDMAP = "no-cloudmap"
    TAGS_OUT_OF_SCOPE = "tags-out-of-scope"
    NO_LEDGER = "no-ledger"


@dataclass(frozen=True, slots=True)
class QuarantineRecord:
    """An instance taken out while its task still runs, as the ledger keeps it: enough to put it back exactly."""

    cloudmap_service_id: str
    instance_id: str
    attributes: Mapping[str, str]  # exactly as Cloud Map held them (ECS wrote them); never edited
    task_arn: str
    cluster_arn: str
    service_name: str
    reason: Reason
    rule: Rule
    since: float = 0.0  # epoch seconds; stamped when the record is written

    @property
    def key(self) -> InstanceKey:
        return (self.cloudmap_service_id, self.instance_id)


@dataclass(frozen=True, slots=True)
class Deregister:
    """Take one task's instance out of one Cloud Map service (``quarantine``: record it first)."""

    cluster_arn: str
    service_name: str
    task_arn: str
    cloudmap_service_id: str
    reason: Reason
    rule: Rule
    quarantine: QuarantineRecord | None = None

    @property
    def instance_id(self) -> str:
        return task_id(self.task_arn)

    @property
    def key(self) -> InstanceKey:
        return (self.cloudmap_service_id, self.instance_id)


@dataclass(frozen=True, slots=True)
class Redeploy:
    """Force a new deployment of a stale Service Connect client."""

    client: StaleClient
    rule: Rule = Rule.START_ORDER


@dataclass(frozen=True, slots=True)
class Restore:
    """Register a quarantined instance again, with exactly its recorded id and attributes; then forget it."""

    record: QuarantineRecord
    rule: Rule = Rule.RECOVERED


@dataclass(frozen=True, slots=True)
class Forget:
    """Delete a quarantine record whose task is leaving or gone (never registered again)."""

    record: QuarantineRecord
    rule: Rule = Rule.TASK_GONE


@dataclass(frozen=True, slots=True)
class StopTask:
    """Stop a task quarantined for failed probes too long, as ECS does after failed ELB health checks."""

    record: QuarantineRecord
    rule: Rule = Rule.REPLACE


Action = Deregister | Redeploy | Restore | Forget | StopTask


@dataclass(frozen=True, slots=True)
class Held:
    why: Hold
    detail: str = ""
    action: Action | None = None  # what would have been done (dry run, fail-open)


@dataclass(frozen=True, slots=True)
class GuardVerdict:
    """The fail-open guard's arithmetic for one Cloud Map service that had health removals to make."""

    cloudmap_service_id: str
    service_names: tuple[str, ...]
    running: int  # running tasks of the ECS services registered in it
    healthy_registered: int  # of those: registered now and not failing
    required: int  # how many must stay registered and healthy
    failing: int
    holds: bool  # True: nothing leaves this Cloud Map service for health this pass

    @property
    def healthy_percent_after(self) -> float:
        return 100.0 * self.healthy_registered / self.running if self.running else 100.0


@dataclass(frozen=True, slots=True)
class UnhealthyTask:
    task: TaskSnapshot
    service: EcsService


@dataclass(frozen=True, slots=True)
class OrphanInstance:
    """A Cloud Map instance whose id matches no task ECS knows (counted and logged, never removed)."""

    cluster_arn: str
    service_name: str
    cloudmap_service_id: str
    instance_id: str


@dataclass(frozen=True, slots=True)
class ClusterSnapshot:
    """What one pass read about one cluster: the only input of ``decide_cluster`` besides policy and memory.

    ``instances`` holds the Cloud Map services whose instances were listed this pass (for
    reconciliation, probes or the guard); ``departed`` the described tasks of registered ids that
    are not among ``tasks`` (reconciliation); ``probe_failures`` the consecutive failed probes.
    """

    cluster_arn: str
    services: Mapping[str, EcsService]
    tasks: tuple[TaskSnapshot, ...] = ()
    instances: Instances = field(default_factory=dict)
    reconcile: bool = False
    departed: Mapping[str, TaskSnapshot] = field(default_factory=dict)
    endpoints_created: Mapping[str, datetime] = field(default_factory=dict)
    probes: Mapping[InstanceKey, ProbeStreak] = field(default_factory=dict)
    quarantined: tuple[QuarantineRecord, ...] = ()  # the ledger's records of this cluster
    now: float = 0.0  # epoch seconds of the pass (replacement ages)
    probed_services: frozenset[str] = frozenset()  # services whose HTTP check was probed this pass
    # Cloud Map services listed right before acting: the only listings the guard trusts (a removal
    # by the reactor since the pass began is then counted).
    fresh: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Memory:
    """What earlier passes of this invocation did: instances taken out (dry runs too), services redeployed."""

    removed: frozenset[InstanceKey] = frozenset()
    redeployed: frozenset[str] = frozenset()  # service ARNs


@dataclass(slots=True)
class Decision:
    actions: list[Action] = field(default_factory=list)
    held: list[Held] = field(default_factory=list)
    unhealthy: list[UnhealthyTask] = field(default_factory=list)
    orphans: list[OrphanInstance] = field(default_factory=list)
    stale_clients: list[StaleClient] = field(default_factory=list)
    guard: list[GuardVerdict] = field(default_factory=list)
    invalid_records: list[QuarantineRecord] = field(default_factory=list)  # ledger items never acted on
    # Cloud Map services whose instances the guard must see before it can judge: read them, decide again.
    needs_listing: set[str] = field(default_factory=set)

    @property
    def fail_open(self) -> list[GuardVerdict]:
        return [verdict for verdict in self.guard if verdict.holds]

    def planned(self, *, including_dry_run: bool = True) -> list[Action]:
        """The actions, and with ``including_dry_run`` those a dry run held back: what ``plan`` shows."""
        dry = [h.action for h in self.held if h.why is Hold.DRY_RUN and h.action is not None]
        return [*self.actions, *(dry if including_dry_run else [])]

    def merge(self, other: Decision) -> None:
        self.actions.extend(other.actions)
        self.held.extend(other.held)
        self.unhealthy.extend(other.unhealthy)
        self.orphans.extend(other.orphans)
        self.stale_clients.extend(other.stale_clients)
        self.guard.extend(other.guard)
        self.invalid_records.extend(other.invalid_records)
        self.needs_listing.update(other.needs_listing)
