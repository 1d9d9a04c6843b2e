"""Build each function's collaborators once per container (on the first use).

The policy is validated when a handler module is imported, so a bad environment stops the
function at its cold start with a message naming the variable; tests call ``reset()`` to start
from a clean container (and a changed environment).
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
from cloudmap_reactor.config import Policy
from cloudmap_reactor.core.http_checks import HttpChecks
from cloudmap_reactor.core.service_cache import CachedServiceLookup
from cloudmap_reactor.observability import logger, traced_phase
from cloudmap_reactor.poller.acting import Actor
from cloudmap_reactor.poller.reading import PassReader
from cloudmap_reactor.poller.scanner import HealthScanner

if TYPE_CHECKING:
    from cloudmap_reactor.adapters.http_probe import RequestsProber


@dataclass(frozen=True, slots=True)
class ReactorDeps:
    policy: Policy
    services: CachedServiceLookup
    actor: Actor


@dataclass(frozen=True, slots=True)
class PollerDeps:
    policy: Policy
    reader: PassReader
    actor: Actor
    ecs_budget: TokenBucket
    prober: RequestsProber | None  # None: HTTP probes are off

    def new_scanner(self) -> HealthScanner:
        """A scanner for one invocation: what it remembers lasts that long."""
        allow_loopback = self.policy.probe_allow_loopback
        http = HttpChecks(self.prober, allow_loopback=allow_loopback) if self.prober is not None else None
        return HealthScanner(reader=self.reader, policy=self.policy, actor=self.actor, http=http, phase=traced_phase)


@cache
def policy() -> Policy:
    loaded = Policy.from_env()
    logger.setLevel(loaded.log_level)
    return loaded


@cache
def reactor_deps() -> ReactorDeps:
    config = policy()
    return ReactorDeps(
        policy=config,
        services=CachedServiceLookup(EcsReader(ecs_client()), ttl_seconds=config.service_cache_ttl_seconds),
        actor=Actor(remover=CloudMapDeregistrar(cloudmap_client())),
    )


@cache
def poller_deps() -> PollerDeps:
    config = policy()
    ecs = ecs_client()
    budget = TokenBucket(config.ecs_reads_per_second)
    budget.attach(ecs)
    calls = ThreadPoolExecutor(max_workers=config.scan_concurrency, thread_name_prefix="aws-call")
    registry = CloudMapDeregistrar(cloudmap_client())
    return PollerDeps(
        policy=config,
        reader=PassReader(
            fleet=EcsReader(ecs, executor=calls),
            registry=registry,
            policy=config,
            clusters=ThreadPoolExecutor(max_workers=config.scan_concurrency, thread_name_prefix="cluster"),
            calls=calls,
        ),
        actor=Actor(remover=registry, redeployer=EcsServiceUpdater(ecs)),
        ecs_budget=budget,
        prober=_prober(config),
    )


def _prober(config: Policy) -> RequestsProber | None:
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
    """Forget the policy, caches, pools and clients, as a new container would."""
    if poller_deps.cache_info().currsize:
        deps = poller_deps()
        if deps.prober is not None:
            deps.prober.close()
        deps.reader.close()
    policy.cache_clear()
    reactor_deps.cache_clear()
    poller_deps.cache_clear()
    reset_clients()
