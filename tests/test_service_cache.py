"""CachedServiceLookup: what the reactor's per-container cache keeps, and for how long."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pytest

from cloudmap_reactor.core.model import EcsService
from cloudmap_reactor.core.ports import AwsCallFailed
from cloudmap_reactor.core.service_cache import NEGATIVE_TTL_SECONDS, CachedServiceLookup

CLUSTER = "arn:aws:ecs:us-east-1:123456789012:cluster/prod"


def service(*discovery: str) -> EcsService:
    """``orders`` with one Cloud Map service per discovery name (none: not in Cloud Map)."""
    pairs = tuple((name, f"srv-{name}") for name in discovery)
    return EcsService(
        cluster_arn=CLUSTER,
        service_name="orders",
        service_arn=f"{CLUSTER.replace(':cluster/', ':service/')}/orders",
        cloudmap_service_ids=frozenset(sid for _, sid in pairs),
        discovery=pairs,
    )


@dataclass
class Directory:
    """Answers from a script: a service, None (ECS said MISSING) or an exception; counts the calls."""

    answers: list[EcsService | Exception | None]
    calls: int = 0

    def describe_services(self, cluster_arn: str, service_names_or_arns: Sequence[str]) -> list[EcsService]:
        answer = self.answers[min(self.calls, len(self.answers) - 1)]
        self.calls += 1
        if isinstance(answer, Exception):
            raise answer
        return [] if answer is None else [answer]


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def test_a_failed_lookup_is_never_cached(clock: Clock) -> None:
    directory = Directory([AwsCallFailed("DescribeServices throttled"), service("orders")])
    cache = CachedServiceLookup(directory, ttl_seconds=30, clock=clock)

    with pytest.raises(AwsCallFailed):
        cache.get(CLUSTER, "orders")
    assert cache.get(CLUSTER, "orders") == service("orders")
    assert cache.get(CLUSTER, "orders") == service("orders")
    assert directory.calls == 2


def test_a_service_in_cloud_map_is_kept_for_the_ttl(clock: Clock) -> None:
    directory = Directory([service("orders")])
    cache = CachedServiceLookup(directory, ttl_seconds=30, clock=clock)

    cache.get(CLUSTER, "orders")
    clock.now += 29
    cache.get(CLUSTER, "orders")
    assert directory.calls == 1
    clock.now += 1
    cache.get(CLUSTER, "orders")
    assert directory.calls == 2


@pytest.mark.parametrize(
    ("first", "name"), [(None, "missing service"), (service(), "service without Cloud Map")], ids=["missing", "empty"]
)
def test_an_answer_with_nothing_to_deregister_is_kept_only_briefly(
    clock: Clock, first: EcsService | None, name: str
) -> None:
    """A burst within seconds costs one call; a service that just got Service Connect is seen soon after."""
    directory = Directory([first, service("orders")])
    cache = CachedServiceLookup(directory, ttl_seconds=30, clock=clock)

    assert cache.get(CLUSTER, "orders") == first, name
    clock.now += NEGATIVE_TTL_SECONDS - 0.1
    assert cache.get(CLUSTER, "orders") == first, name
    assert directory.calls == 1
    clock.now += 0.1
    assert cache.get(CLUSTER, "orders") == service("orders")
    assert directory.calls == 2


def test_a_cached_service_lacking_the_callers_discovery_name_is_read_again(clock: Clock) -> None:
    directory = Directory([service("orders"), service("orders", "orders-grpc")])
    cache = CachedServiceLookup(directory, ttl_seconds=30, clock=clock)

    cache.get(CLUSTER, "orders")
    assert cache.get(CLUSTER, "orders", discovery_name="orders") == service("orders")
    assert directory.calls == 1
    assert cache.get(CLUSTER, "orders", discovery_name="orders-grpc") == service("orders", "orders-grpc")
    assert directory.calls == 2
    assert cache.get(CLUSTER, "orders", discovery_name="orders-grpc") == service("orders", "orders-grpc")
    assert directory.calls == 2


def test_no_ttl_means_no_cache(clock: Clock) -> None:
    directory = Directory([None, service("orders")])
    cache = CachedServiceLookup(directory, ttl_seconds=0, clock=clock)

    assert cache.get(CLUSTER, "orders") is None
    assert cache.get(CLUSTER, "orders") == service("orders")
    cache.get(CLUSTER, "orders")
    assert directory.calls == 3
