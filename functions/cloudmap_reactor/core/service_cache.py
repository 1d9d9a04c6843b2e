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


@dataclass
class CachedServiceLookup:
    """Look up one ECS service by cluster and name, remembering answers for ``ttl_seconds``.

    A service that does not exist (deleted) is remembered as ``None`` too.
    """

    directory: ServiceDirectory
    ttl_seconds: float
    clock: Callable[[], float] = time.monotonic
    _entries: dict[tuple[str, str], tuple[float, EcsService | None]] = field(default_factory=dict)

    def get(self, cluster_arn: str, service_name: str) -> EcsService | None:
        key = (cluster_arn, service_name)
        now = self.clock()
        cached = self._entries.get(key)
        if cached is not None and now - cached[0] < self.ttl_seconds:
            return cached[1]
        found = self.directory.describe_services(cluster_arn, [service_name])
        service = next((s for s in found if s.service_name == service_name), None)
        if len(self._entries) >= _MAX_ENTRIES:
            self._entries.clear()
        self._entries[key] = (now, service)
        return service
