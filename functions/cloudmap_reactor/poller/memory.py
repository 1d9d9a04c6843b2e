"""What the poller remembers between passes: per container (service views) and per invocation (what it did).

``ContainerMemory`` survives warm invocations: the clusters in scope, each cluster's services as
last described (with the container pass each was described on) and the creation dates of Cloud
Map services (immutable). A warm invocation's first pass therefore reads no service it read a
moment ago; services are described again in slices, oldest first (``poller.reading``).

``InvocationMemory`` is what one invocation did: instances it took out and services it
redeployed. The decisions rely on it (an instance taken out is not taken out again, and its task
is still read; a client is redeployed once); across invocations the quarantine ledger and the
services' deployments carry that knowledge, so it starts empty with each invocation.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

from cloudmap_reactor.core.decisions import InstanceKey, Memory
from cloudmap_reactor.core.model import Deregistration, EcsService, Outcome, TagScope

NEVER = -1  # ``ClusterView.described_on`` of a service listed but not described yet
ENDPOINT_DATES = 10_000  # Cloud Map service creation dates remembered per container


@dataclass
class ClusterView:
    """The services of one cluster as last described; ``None`` marks a name ECS does not know.

    ``described_on``: the container pass each service (by name) was last described on, ``NEVER``
    for a service listed but not described yet. ``listed_on``: the pass of the last
    ``ListServices``; a refresh cycle ends when every listed service was described since.
    """

    services: dict[str, EcsService | None]
    described_on: dict[str, int] = field(default_factory=dict)
    listed_on: int = NEVER
    urgent: set[str] = field(default_factory=set)  # described first in the next slice (a redeployed client)
    deferred: set[str] = field(default_factory=set)  # their slice failed: described again next cycle
    # Learnt from the last ECS task listing (``poller.reading``): how many tasks the whole cluster
    # listed (standalone ones included), and the running tasks of services that matter that were
    # not registered in Cloud Map then (task id -> service name), described until they stop.
    tasks_listed: int = 0
    unregistered: dict[str, str] = field(default_factory=dict)

    def described(self) -> dict[str, EcsService]:
        return {name: s for name, s in self.services.items() if s is not None}

    def managed(self, scope: TagScope) -> dict[str, EcsService]:
        """Services registered in Cloud Map that the tags let this tool look after."""
        return {name: s for name, s in self.described().items() if s.managed(scope)}

    def fresh(self, pass_number: int) -> set[str]:
        """The services described on ``pass_number`` (their ``runningCount`` is current)."""
        return {name for name, on in self.described_on.items() if on == pass_number}

    def due(self) -> list[str]:
        """Services not described since the last listing: urgent ones, then never described, then the oldest."""
        late = [
            n
            for n, on in self.described_on.items()
            if (on < self.listed_on or on == NEVER or n in self.urgent) and n not in self.deferred
        ]
        return sorted(late, key=lambda name: (name not in self.urgent, self.described_on[name], name))

    def warming(self) -> bool:
        """Some listed service was never described (a cold view): it is described before the refresh cycle goes on."""
        return any(on == NEVER for on in self.described_on.values())

    def relist(self, names: Iterable[str], pass_number: int) -> None:
        """A new ``ListServices``: services gone from it are dropped, new ones are due first."""
        listed = set(names)
        for gone in (set(self.services) | set(self.described_on)) - listed:
            self.forget(gone)
        for name in listed - set(self.described_on):
            self.described_on[name] = NEVER
        self.listed_on = pass_number
        self.deferred.clear()

    def update(self, names: Iterable[str], found: Iterable[EcsService], pass_number: int) -> None:
        """``names`` were just described; those not in ``found`` no longer exist (or were deleted)."""
        by_name = {s.service_name: s for s in found}
        for name in names:
            self.urgent.discard(name)
            self.deferred.discard(name)
            if name in by_name and by_name[name].active:
                self.services[name] = by_name[name]
                self.described_on[name] = pass_number
            else:
                self.forget(name)
                self.services[name] = None  # ECS does not know it (or it was deleted): not asked until listed again

    def forget(self, name: str) -> None:
        self.services.pop(name, None)
        self.described_on.pop(name, None)
        self.urgent.discard(name)
        self.deferred.discard(name)


@dataclass
class ContainerMemory:
    """Kept for the container's life (warm invocations included): clusters, their services, endpoint dates."""

    pass_number: int = 0  # the container's passes, over every invocation
    clusters: list[str] | None = None
    clusters_listed_on: int = NEVER
    views: dict[str, ClusterView] = field(default_factory=dict)
    created: dict[str, datetime] = field(default_factory=dict)  # Cloud Map service id -> CreateDate

    def next_pass(self) -> int:
        self.pass_number += 1
        return self.pass_number

    def remember_created(self, sid: str, when: datetime) -> None:
        if len(self.created) >= ENDPOINT_DATES:
            self.created.clear()
        self.created[sid] = when


@dataclass
class InvocationMemory:
    """What this invocation did, for its later passes (see the module's docstring for why per invocation)."""

    pass_number: int = -1
    removed: set[InstanceKey] = field(default_factory=set)  # taken out (or, in a dry run, would have been)
    redeployed: set[str] = field(default_factory=set)  # service ARNs given a new deployment

    def next_pass(self) -> int:
        self.pass_number += 1
        return self.pass_number

    def for_decisions(self) -> Memory:
        return Memory(removed=frozenset(self.removed), redeployed=frozenset(self.redeployed))

    def remember(self, records: Iterable[Deregistration]) -> None:
        """An instance taken out (or already gone, or a dry run's) is not taken out again this invocation."""
        self.removed.update((r.cloudmap_service_id, r.instance_id) for r in records if r.outcome is not Outcome.FAILED)
