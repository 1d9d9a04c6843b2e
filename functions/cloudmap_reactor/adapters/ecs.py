"""ECS reads: clusters, services (with their Cloud Map services) and tasks.

Every list call goes through a paginator at the API's maximum page size, and every describe
call is batched at the API's maximum (10 services, 100 tasks).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from cloudmap_reactor.adapters.errors import aws_call
from cloudmap_reactor.core.model import EcsService, TaskSnapshot, cloudmap_service_id

if TYPE_CHECKING:
    from mypy_boto3_ecs import ECSClient

DESCRIBE_SERVICES_BATCH = 10
DESCRIBE_TASKS_BATCH = 100
LIST_PAGE_SIZE = 100


class EcsReader:
    """Read-only view of ECS in the core's terms."""

    def __init__(self, client: ECSClient) -> None:
        self._client = client

    def list_cluster_arns(self) -> list[str]:
        with aws_call("ListClusters"):
            pages = self._client.get_paginator("list_clusters").paginate(PaginationConfig={"PageSize": LIST_PAGE_SIZE})
            return [arn for page in pages for arn in page.get("clusterArns", [])]

    def list_service_arns(self, cluster_arn: str) -> list[str]:
        with aws_call("ListServices", cluster_arn):
            pages = self._client.get_paginator("list_services").paginate(
                cluster=cluster_arn, PaginationConfig={"PageSize": LIST_PAGE_SIZE}
            )
            return [arn for page in pages for arn in page.get("serviceArns", [])]

    def describe_services(self, cluster_arn: str, service_names_or_arns: Sequence[str]) -> list[EcsService]:
        services: list[EcsService] = []
        for batch in _chunks(service_names_or_arns, DESCRIBE_SERVICES_BATCH):
            with aws_call("DescribeServices", cluster_arn):
                response = self._client.describe_services(cluster=cluster_arn, services=batch)
            services.extend(_to_ecs_service(cluster_arn, raw) for raw in response.get("services", []))
        return services

    def list_running_task_arns(self, cluster_arn: str) -> list[str]:
        with aws_call("ListTasks", cluster_arn):
            pages = self._client.get_paginator("list_tasks").paginate(
                cluster=cluster_arn,
                desiredStatus="RUNNING",
                PaginationConfig={"PageSize": LIST_PAGE_SIZE},
            )
            return [arn for page in pages for arn in page.get("taskArns", [])]

    def describe_tasks(self, cluster_arn: str, task_arns: Iterable[str]) -> list[TaskSnapshot]:
        tasks: list[TaskSnapshot] = []
        for batch in _chunks(task_arns, DESCRIBE_TASKS_BATCH):
            with aws_call("DescribeTasks", cluster_arn):
                response = self._client.describe_tasks(cluster=cluster_arn, tasks=batch)
            tasks.extend(_to_task_snapshot(cluster_arn, raw) for raw in response.get("tasks", []))
        return tasks


def _to_ecs_service(cluster_arn: str, raw: Any) -> EcsService:
    """Collect the Cloud Map service of every discovery name of every deployment."""
    ids = {
        service_id
        for deployment in raw.get("deployments", [])
        for resource in deployment.get("serviceConnectResources", [])
        if (service_id := cloudmap_service_id(resource.get("discoveryArn", ""))) is not None
    }
    return EcsService(
        cluster_arn=cluster_arn,
        service_name=raw["serviceName"],
        service_arn=raw["serviceArn"],
        cloudmap_service_ids=frozenset(ids),
    )


def _to_task_snapshot(cluster_arn: str, raw: Any) -> TaskSnapshot:
    started_at = raw.get("startedAt")
    return TaskSnapshot(
        cluster_arn=cluster_arn,
        task_arn=raw["taskArn"],
        group=raw.get("group", ""),
        last_status=raw.get("lastStatus", ""),
        desired_status=raw.get("desiredStatus", ""),
        health_status=raw.get("healthStatus", "UNKNOWN"),
        started_at=started_at if isinstance(started_at, datetime) else None,
    )


def _chunks(items: Iterable[str], size: int) -> Iterator[list[str]]:
    """``itertools.batched`` (Python 3.12+) for the 3.11 toolchain too."""
    batch: list[str] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
