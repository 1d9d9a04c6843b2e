"""Build each function's collaborators once per container (on the first use).

The policy is validated when a handler module is imported, so a bad environment stops the
function at its cold start with a message naming the variable; tests call ``reset()`` to start
from a clean container (and a changed environment).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cache
from typing import TYPE_CHECKING

from cloudmap_reactor.adapters.clients import cloudmap_client, dynamodb_client, ecs_client, reset_clients
from cloudmap_reactor.adapters.cloudmap import CloudMapDeregistrar
from cloudmap_reactor.adapters.clusters import ClusterDirectory
from cloudmap_reactor.adapters.ecs import EcsReader, EcsServiceUpdater
from cloudmap_reactor.adapters.ledger import DynamoDbLedger
from cloudmap_reactor.adapters.rate_limit import TokenBucket
from cloudmap_reactor.config import Policy
from cloudmap_reactor.core.http_checks import HttpChecks, ProbeHistory
from cloudmap_reactor.core.ports import AwsCallFailed
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
    # Readiness events (ReadinessEvents=true): one service's tasks and instances, and the ledger.
    fleet: EcsReader
    registry: CloudMapDeregistrar
    ledger: DynamoDbLedger | None
    clusters: ClusterDirectory | None = None  # ClusterTag: whether an event's cluster carries the tag


@dataclass(slots=True)
class PollerDeps:
    policy: Policy
    reader: PassReader
    actor: Actor
    ecs_budget: TokenBucket
    prober: RequestsProber | None  # None: HTTP probes are off
    ledger: DynamoDbLedger | None  # None: no LEDGER_TABLE (local runs): removals are one-way
    history: ProbeHistory | None = None  # the container's probe streaks (loaded from the ledger once)
    missing_reported: set[str] = field(default_factory=set)  # clusters reported missing by this container

    def new_scanner(self, owner: str) -> HealthScanner:
        """A scanner for one invocation (``owner``: its request id, the lease holder's name)."""
        http = None
        if self.prober is not None:
            http = HttpChecks(self.prober, allow_loopback=self.policy.probe_allow_loopback, history=self._history())
        return HealthScanner(
            reader=self.reader,
            policy=self.policy,
            actor=self.actor,
            http=http,
            ledger=self.ledger,
            owner=owner,
            phase=traced_phase,
        )

    def save_history(self) -> None:
        """Keep the probe streaks for the next container (only when this invocation changed them)."""
        if self.ledger is not None and self.history is not None and self.history.changed:
            self.ledger.save_streaks(self.history.streaks())
            self.history.changed = False

    def _history(self) -> ProbeHistory:
        if self.history is None:
            streaks, unknown = {}, False
            if self.ledger is not None:
                try:
                    streaks = self.ledger.load_streaks()
                except AwsCallFailed as exc:
                    unknown = True  # ready instances must not look never-ready: assume they are
                    logger.warning(
                        "Could not load the probe streaks; taking instances as ready", extra={"error": str(exc)}
                    )
            self.history = ProbeHistory(streaks, assume_ready=unknown)
        return self.history


@cache
def policy() -> Policy:
    loaded = Policy.from_env()
    logger.setLevel(loaded.log_level)
    return loaded


@cache
def reactor_deps() -> ReactorDeps:
    config = policy()
    fleet = EcsReader(ecs_client())
    registry = CloudMapDeregistrar(cloudmap_client())
    ledger = DynamoDbLedger(dynamodb_client(), config.ledger_table) if config.ledger_table else None
    return ReactorDeps(
        policy=config,
        services=CachedServiceLookup(fleet, ttl_seconds=config.service_cache_ttl_seconds),
        actor=Actor(remover=registry, registrar=registry, ledger=ledger, tasks=fleet),
        fleet=fleet,
        registry=registry,
        ledger=ledger,
        clusters=_cluster_directory(config, ttl_seconds=config.service_cache_ttl_seconds),
    )


def _cluster_directory(config: Policy, *, ttl_seconds: float = 0.0) -> ClusterDirectory | None:
    """The clusters carrying ``CLUSTER_TAG`` (None when clusters are not named by a tag)."""
    tag = config.cluster_tag_pair
    return ClusterDirectory(ecs_client(), *tag, ttl_seconds=ttl_seconds) if tag else None


@cache
def poller_deps() -> PollerDeps:
    config = policy()
    ecs = ecs_client()
    budget = TokenBucket(config.ecs_reads_per_second)
    calls_pool = ThreadPoolExecutor(max_workers=config.scan_concurrency, thread_name_prefix="aws-call")
    fleet = EcsReader(ecs, executor=calls_pool)
    budget.attach(ecs)
    registry = CloudMapDeregistrar(cloudmap_client())
    ledger = DynamoDbLedger(dynamodb_client(), config.ledger_table) if config.ledger_table else None
    updater = EcsServiceUpdater(ecs)
    directory = _cluster_directory(config)
    return PollerDeps(
        policy=config,
        reader=PassReader(
            fleet=fleet,
            registry=registry,
            policy=config,
            clusters=ThreadPoolExecutor(max_workers=config.scan_concurrency, thread_name_prefix="cluster"),
            calls=calls_pool,
            discover_clusters=directory.tagged if directory else None,
        ),
        actor=Actor(
            remover=registry, registrar=registry, ledger=ledger, redeployer=updater, stopper=updater, tasks=fleet
        ),
        ecs_budget=budget,
        prober=_prober(config),
        ledger=ledger,
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
