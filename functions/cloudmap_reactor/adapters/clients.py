"""boto3 clients, created once per container on first use.

Adaptive retry mode backs off and rate-limits client-side when AWS throttles, so a burst of
work slows down instead of failing; the short timeouts keep a hung connection from eating the
whole Lambda timeout. ``AWS_ENDPOINT_URL`` (honoured by botocore) points them at a local
emulator for the demo and ``sam local invoke``.
"""

from __future__ import annotations

from functools import cache
from typing import TYPE_CHECKING

import boto3
from botocore.config import Config

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient
    from mypy_boto3_ecs import ECSClient
    from mypy_boto3_servicediscovery import ServiceDiscoveryClient

TOTAL_MAX_ATTEMPTS = 6  # the first call and up to 5 retries

CLIENT_CONFIG = Config(
    retries={"mode": "adaptive", "total_max_attempts": TOTAL_MAX_ATTEMPTS},
    connect_timeout=3,
    read_timeout=10,
    tcp_keepalive=True,
    max_pool_connections=20,
)


@cache
def ecs_client() -> ECSClient:
    return boto3.client("ecs", config=CLIENT_CONFIG)


@cache
def cloudmap_client() -> ServiceDiscoveryClient:
    return boto3.client("servicediscovery", config=CLIENT_CONFIG)


@cache
def dynamodb_client() -> DynamoDBClient:
    return boto3.client("dynamodb", config=CLIENT_CONFIG)


def reset_clients() -> None:
    """Forget the clients (tests start a fresh emulator per test)."""
    ecs_client.cache_clear()
    cloudmap_client.cache_clear()
    dynamodb_client.cache_clear()
