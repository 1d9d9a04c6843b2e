"""Service Connect start-order drift: client tasks that cannot resolve an endpoint created after they started.

Service Connect writes the endpoints it knows into each task when the task starts; AWS documents
that existing tasks cannot resolve an endpoint created later. When services are deployed together
(CloudFormation or CDK create them in parallel), a client such as WordPress can start before its
database's endpoint exists and stay broken until it is redeployed. A task is *stale* when an
endpoint its service depends on was created (its Cloud Map service's CreateDate) after the task
started. Healing is a forced new deployment of the client: its new tasks start after the
endpoint exists, so the check is naturally idempotent.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime

from cloudmap_reactor.core.model import DEPENDS_ON_TAG, REDEPLOY_STALE_TAG, EcsService, TagScope, TaskSnapshot, is_true


@dataclass(frozen=True, slots=True)
class StaleClient:
    """A client service with running tasks that started before some endpoint they depend on existed."""

    service: EcsService
    stale_tasks: tuple[TaskSnapshot, ...]
    newer_endpoints: tuple[tuple[str, datetime], ...]  # (discovery name, created at)


def declared_dependencies(client: EcsService) -> list[str]:
    """Discovery names from the ``cloudmap-reactor:depends-on`` tag (comma-separated)."""
    return [name.strip() for name in (client.tag(DEPENDS_ON_TAG) or "").split(",") if name.strip()]


def dependency_endpoints(client: EcsService, services: Iterable[EcsService], *, every_endpoint: bool) -> dict[str, str]:
    """Discovery name -> Cloud Map service id of the endpoints ``client`` depends on.

    Declared ones (tag), or with ``every_endpoint`` every endpoint of the client's namespace;
    endpoints of the client itself never count.
    """
    known: dict[str, str] = {}
    for service in services:
        if service.service_name == client.service_name or service.namespace != client.namespace:
            continue
        known.update(service.endpoints)
    if every_endpoint:
        return known
    return {name: known[name] for name in declared_dependencies(client) if name in known}


def find_stale(
    client: EcsService, tasks: Iterable[TaskSnapshot], endpoints_created: Mapping[str, datetime]
) -> StaleClient | None:
    """The client's running tasks that started before one of ``endpoints_created`` was created."""
    stale: list[TaskSnapshot] = []
    newer: dict[str, datetime] = {}
    for task in tasks:
        if task.started_at is None or task.desired_status != "RUNNING" or task.last_status != "RUNNING":
            continue
        later = {name: created for name, created in endpoints_created.items() if created > task.started_at}
        if later:
            stale.append(task)
            newer.update(later)
    if not stale:
        return None
    return StaleClient(service=client, stale_tasks=tuple(stale), newer_endpoints=tuple(sorted(newer.items())))


def choose_redeployment(
    stale: Iterable[StaleClient], *, heal_all: bool, already: frozenset[str] | set[str]
) -> StaleClient | None:
    """At most one client per cluster per pass, never one that is already deploying or was just redeployed."""
    for client in sorted(stale, key=lambda c: c.service.service_name):
        wanted = heal_all or is_true(client.service.tag(REDEPLOY_STALE_TAG))
        if wanted and not client.service.deployment_in_progress and client.service.service_arn not in already:
            return client
    return None


def start_order_clients(
    services: Iterable[EcsService], scope: TagScope, *, every_endpoint: bool
) -> list[tuple[EcsService, dict[str, str]]]:
    """The Service Connect clients in scope to check, each with the endpoints (name -> Cloud Map id) it depends on.

    Reading asks this which Cloud Map services' creation dates to fetch; deciding asks it again.
    """
    described = list(services)
    clients: list[tuple[EcsService, dict[str, str]]] = []
    for client in sorted(described, key=lambda s: s.service_name):
        if not client.service_connect or not client.in_scope(scope):
            continue
        if not every_endpoint and not declared_dependencies(client):
            continue
        if endpoints := dependency_endpoints(client, described, every_endpoint=every_endpoint):
            clients.append((client, endpoints))
    return clients
