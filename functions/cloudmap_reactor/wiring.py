"""Build each function's collaborators once per container (on the first invocation).

Settings are validated here, so a bad environment fails the first invocation with a clear
message instead of failing at import. Tests call ``reset()`` to start from a clean container.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING

from cloudmap_reactor.adapters.clients import cloudmap_client, ecs_client, reset_clients
from cloudmap_reactor.adapters.cloudmap import CloudMapDeregistrar
from cloudmap_reactor.adapters.ecs import EcsReader, EcsServiceUpdater
from cloudmap_reactor.adapters.rate_limit import TokenBucket
from cloudmap_reactor.config import Settings
from cloudmap_reactor.core.health_scan import HealthScanner
from cloudmap_reactor.core.service_cache import CachedServiceLookup
from cloudmap_reactor.observability import logger

if TYPE_CHECKING:
    from cloudmap_reactor.adapters.http_probe import RequestsProber


@dataclass(frozen=True, slots=True)
class ReactorDeps:
    settings: Settings
    services: CachedServiceLookup
    remover: CloudMapDeregistrar


@dataclass(frozen=True, slots=True)
class PollerDeps:
    settings: Settings
    fleet: EcsReader
    remover: CloudMapDeregistrar
    ecs_budget: TokenBucket
    updater: EcsServiceUpdater
    prober: RequestsProber | None  # None: HTTP probes are off

    def new_scanner(self) -> HealthScanner:
        """A scanner for one invocation: what it learns about services lasts that long."""
        return HealthScanner(
            fleet=self.fleet,
            registry=self.remover,
            cluster_arns=self.settings.cluster_arns,
            dry_run=self.settings.dry_run,
            refresh_every=self.settings.service_refresh_passes,
            concurrency=self.settings.scan_concurrency,
            scope=self.settings.tag_scope,
            min_healthy_percent=self.settings.min_healthy_percent,
            reconcile_every=self.settings.reconcile_every_passes,
            redeployer=self.updater,
            redeploy_stale_clients=self.settings.redeploy_stale_clients,
            every_endpoint=self.settings.stale_check_every_endpoint,
            prober=self.prober,
            probe_failure_threshold=self.settings.probe_failure_threshold,
            probe_allow_loopback=self.settings.probe_allow_loopback,
        )


@cache
def settings() -> Settings:
    loaded = Settings.from_env()
    logger.setLevel(loaded.log_level)
    return loaded


@cache
def reactor_deps() -> ReactorDeps:
    config = settings()
    return ReactorDeps(
        settings=config,
        services=CachedServiceLookup(EcsReader(ecs_client()), ttl_seconds=config.service_cache_ttl_seconds),
        remover=CloudMapDeregistrar(cloudmap_client()),
    )


@cache
def poller_deps() -> PollerDeps:
    config = settings()
    ecs = ecs_client()
    budget = TokenBucket(config.ecs_reads_per_second)
    budget.attach(ecs)
    return PollerDeps(
        settings=config,
        fleet=EcsReader(ecs, executor=ThreadPoolExecutor(max_workers=config.scan_concurrency)),
        remover=CloudMapDeregistrar(cloudmap_client()),
        ecs_budget=budget,
        updater=EcsServiceUpdater(ecs),
        prober=_prober(config),
    )


def _prober(config: Settings) -> RequestsProber | None:
    """The HTTP prober, or None (logged once per container) when the poller cannot reach tasks."""
    if not config.http_probes:
        logger.info(
            "HTTP probes are off: the poller does not run in the tasks' VPC. Services tagged "
            "cloudmap-reactor:http-check are not probed (set ProbeSubnetIds and ProbeSecurityGroupIds)."
        )
        return None
    # Imported only when probes are on: requests adds to every cold start otherwise.
    from cloudmap_reactor.adapters.http_probe import RequestsProber  # noqa: PLC0415

    return RequestsProber(
        connect_timeout=config.probe_connect_timeout_seconds,
        read_timeout=config.probe_read_timeout_seconds,
        concurrency=config.probe_concurrency,
    )


def reset() -> None:
    """Forget settings, caches and clients, as a new container would."""
    if poller_deps.cache_info().currsize and (prober := poller_deps().prober) is not None:
        prober.close()
    settings.cache_clear()
    reactor_deps.cache_clear()
    poller_deps.cache_clear()
    reset_clients()
