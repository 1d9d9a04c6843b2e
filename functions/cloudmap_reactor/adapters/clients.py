"""boto3 clients, created once per container on first use.

botocore's adaptive retry mode is the one retry layer of this application: it backs off
(exponentially, with jitter, up to 20 s between attempts) and rate-limits client-side when AWS
throttles, so a burst of work slows down instead of failing. Nothing above it retries a failed
call again (the ECS read budget in ``rate_limit.py`` only spaces calls out). Each client also
obeys the caller's AWS deadline (``deadline.attach_deadline``): inside ``aws_deadline(at)`` no
attempt is sent, and no back-off is slept, past ``at``; without a deadline they behave as plain
botocore clients. The short timeouts keep a hung connection from eating the whole Lambda
timeout. ``AWS_ENDPOINT_URL`` (honoured by botocore) points them at a local emulator for the
demo and ``sam local invoke``.

The clients share one boto3 session whose ECS model is trimmed (``trimmed_model``): ECS answers
are parsed for the fields this application reads only, which halves the CPU a pass spends per
described task.
"""

from __future__ import annotations

from functools import cache
from typing import TYPE_CHECKING

from botocore.config import Config

from cloudmap_reactor.adapters.deadline import attach_deadline
from cloudmap_reactor.adapters.trimmed_model import trimmed_session

if TYPE_CHECKING:
    import boto3
    from mypy_boto3_dynamodb import DynamoDBClient
    from mypy_boto3_ecs import ECSClient
    from mypy_boto3_servicediscovery import ServiceDiscoveryClient

# The first call and up to 5 retries, for both functions: botocore's back-offs then add up to at
# most 1+2+4+8+16 = 31 s when throttled (about half that on average). The reactor (30 s timeout)
# and the poller bound this with a deadline rather than with fewer attempts, so a call that
# would recover on its 4th attempt still does when there is time for it.
TOTAL_MAX_ATTEMPTS = 6

CLIENT_CONFIG = Config(
    retries={"mode": "adaptive", "total_max_attempts": TOTAL_MAX_ATTEMPTS},
    connect_timeout=3,
    read_timeout=10,  # lowered per attempt to the time left before the deadline, if one is set
    tcp_keepalive=True,
    max_pool_connections=20,
)


@cache
def _session() -> boto3.session.Session:
    return trimmed_session()


@cache
def ecs_client() -> ECSClient:
    client = _session().client("ecs", config=CLIENT_CONFIG)
    attach_deadline(client)
    return client


@cache
def cloudmap_client() -> ServiceDiscoveryClient:
    client = _session().client("servicediscovery", config=CLIENT_CONFIG)
    attach_deadline(client)
    return client


@cache
def dynamodb_client() -> DynamoDBClient:
    client: DynamoDBClient = _session().client("dynamodb", config=CLIENT_CONFIG)
    attach_deadline(client)
    return client


def reset_clients() -> None:
    """Forget the clients (tests start a fresh emulator per test)."""
    _session.cache_clear()
    ecs_client.cache_clear()
    cloudmap_client.cache_clear()
    dynamodb_client.cache_clear()
