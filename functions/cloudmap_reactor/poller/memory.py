"""What one poller invocation remembers between its passes (nothing survives the invocation)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

from cloudmap_reactor.core.decisions import InstanceKey, Memory
from cloudmap_reactor.core.model import Deregistration, EcsService, Outcome, TagScope


@dataclass
class ClusterView:
    """The services of one cluster as last described; ``None`` marks a name ECS does not know."""

    services: dict[str, EcsService | None]
    described_on_pass: int
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


@dataclass
class InvocationMemory:
    """Kept between passes: the clusters and their services (refreshed every few passes), what was done."""

    pass_number: int = -1
    clusters: list[str] | None = None
    clusters_listed_on: int = -1
    views: dict[str, ClusterView] = field(default_factory=dict)
    created: dict[str, datetime] = field(default_factory=dict)  # Cloud Map service id -> CreateDate
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
