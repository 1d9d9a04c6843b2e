"""A short-lived, per-container memory of which Cloud Map services an ECS service uses.

A deployment stops many tasks of one service within seconds; with this cache the burst costs
one ``DescribeServices``. The TTL is short because Service Connect configuration can change.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from cloudmap_reactor.core.model import EcsService
from cloudmap_reactor.core.ports import ServiceDirectory

_MAX_ENTRIES = 4096
# How long an answer that gives the reactor nothing to deregister is trusted (see ``get``).
NEGATIVE_TTL_SECONDS = 5.0


@dataclass
class CachedServiceLookup:
    """Look up one ECS service by cluster and name, remembering answers for a while.

    What is remembered, and for how long:

    * a service registered in Cloud Map: ``ttl_seconds``, unless the caller names a
      ``discovery_name`` the cached service lacks (it was added since): then ECS is asked again;
    * a service that ECS says does not exist (``MISSING``: the directory left it out without an
      error), or one with no Cloud Map service: ``min(ttl_seconds, negative_ttl_seconds)`` only.
      Such an answer is wrong for a service whose task just sent an event, or one that just got
      Service Connect; a few seconds still absorb one burst of stop events;
    * a failed lookup (the directory raised, e.g. ``AwsCallFailed`` for a throttled call or for
      services ECS could not describe): never. The error goes to the caller.
    """

    directory: ServiceDirectory
    ttl_seconds: float
    clock: Callable[[], float] = time.monotonic
    negative_ttl_seconds: float = NEGATIVE_TTL_SECONDS
    _entries: dict[tuple[str, str], tuple[float, EcsService | None]] = field(default_factory=dict)

    def get(self, cluster_arn: str, service_name: str, *, discovery_name: str | None = None) -> EcsService | None:
        key = (cluster_arn, service_name)
        now = self.clock()
        cached = self._entries.get(key)
        if cached is not None and self._usable(cached, now, discovery_name):
            return cached[1]
        found = self.directory.describe_services(cluster_arn, [service_name])  # raises: nothing cached
        service = next((s for s in found if s.service_name == service_name), None)
        if len(self._entries) >= _MAX_ENTRIES:
            self._entries.clear()
        self._entries[key] = (now, service)
        return service

    def _usable(self, entry: tuple[float, EcsService | None], now: float, discovery_name: str | None) -> bool:
        stored_at, service = entry
        age = now - stored_at
        if service is None or not service.cloudmap_service_ids:
            return age < min(self.ttl_seconds, self.negative_ttl_seconds)
        if discovery_name is not None and discovery_name not in {name for name, _ in service.discovery}:
            return False
        return age < self.ttl_seconds
