"""ECS reads: clusters, services (with their Cloud Map services) and tasks.

Every list call goes through a paginator at the API's maximum page size, and every describe
call is batched at the API's maximum (10 services, 100 tasks). With an executor, describe
batches run concurrently, and task pages are described as they arrive, so a cluster's scan
takes about as long as walking its ListTasks pages. Executor tasks run in the caller's context
(``submit_in_context``), so an AWS deadline set by the caller bounds them too.

Retries are botocore's alone (adaptive mode, ``clients.py``): a call still failing after them
raises ``AwsCallFailed`` at once, and the first failed batch cancels the batches not yet started.
The one exception is ``DescribeServices`` answering ``failures`` for some services in an HTTP 200
(botocore sees a success): those services, and only those, are asked again, up to
``SERVICE_FAILURE_RETRIES`` times with no pause (the deadline and the read budget still apply),
then the call fails. A failure with reason ``MISSING`` means the service does not exist.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Executor, Future
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

from botocore.exceptions import ClientError

from cloudmap_reactor.adapters.deadline import submit_in_context
from cloudmap_reactor.adapters.errors import aws_call, error_code
from cloudmap_reactor.core.model import EcsService, TaskSnapshot, cloudmap_service_id
from cloudmap_reactor.core.ports import AwsCallFailed

if TYPE_CHECKING:
    from mypy_boto3_ecs import ECSClient

DESCRIBE_SERVICES_BATCH = 10
DESCRIBE_TASKS_BATCH = 100
LIST_PAGE_SIZE = 100
SERVICE_FAILURE_RETRIES = 2
MISSING = "MISSING"

T = TypeVar("T")


class EcsReader:
    """Read-only view of ECS in the core's terms."""

    def __init__(self, client: ECSClient, *, executor: Executor | None = None) -> None:
        self._client = client
        self._executor = executor

    def list_cluster_arns(self) -> list[str]:
        with aws_call("ListClusters"):
            return self._list("list_clusters", "clusterArns")

    def list_service_arns(self, cluster_arn: str) -> list[str]:
        with aws_call("ListServices", cluster_arn):
            return self._list("list_services", "serviceArns", cluster=cluster_arn)

    def describe_services(self, cluster_arn: str, service_names_or_arns: Sequence[str]) -> list[EcsService]:
        """The services that exist; raises ``AwsCallFailed`` if any could not be described."""
        batches = list(_chunks(service_names_or_arns, DESCRIBE_SERVICES_BATCH))
        if self._executor is None or len(batches) < 2:
            return [s for batch in batches for s in self._describe_services(cluster_arn, batch)]
        futures = [submit_in_context(self._executor, self._describe_services, cluster_arn, b) for b in batches]
        return [s for found in _gather(futures) for s in found]

    def describe_tasks(self, cluster_arn: str, task_arns: Iterable[str]) -> list[TaskSnapshot]:
        """Tasks by id or ARN, 100 per call (concurrently with an executor); tasks ECS no longer knows are left out."""
        batches = list(_chunks(task_arns, DESCRIBE_TASKS_BATCH))
        if self._executor is None or len(batches) < 2:
            return [task for batch in batches for task in self._describe(cluster_arn, batch)]
        futures = [submit_in_context(self._executor, self._describe, cluster_arn, b) for b in batches]
        return [task for found in _gather(futures) for task in found]

    def list_task_arns(self, cluster_arn: str, service_name: str | None = None) -> list[str]:
        """The ARNs of the tasks whose desired status is RUNNING (of one service, if named), 100 per page."""
        only = {"serviceName": service_name} if service_name else {}
        with aws_call("ListTasks", f"{cluster_arn} {service_name}" if service_name else cluster_arn):
            return self._list("list_tasks", "taskArns", cluster=cluster_arn, desiredStatus="RUNNING", **only)

    def container_health_check(self, task_definition_arn: str) -> bool:
        """Whether any container of the task definition has a health check (else its tasks stay UNKNOWN)."""
        with aws_call("DescribeTaskDefinition", task_definition_arn):
            response = self._client.describe_task_definition(taskDefinition=task_definition_arn)
        containers = response.get("taskDefinition", {}).get("containerDefinitions", [])
        return any(container.get("healthCheck") for container in containers)

    def describe_running_tasks(self, cluster_arn: str, service_name: str | None = None) -> list[TaskSnapshot]:
        """List the tasks whose desired status is RUNNING (of one service, if named) and describe them.

        Each page of ``ListTasks`` (100 ARNs) is handed to the executor for ``DescribeTasks`` while
        the next page is fetched: the two call chains overlap instead of adding up.
        """
        pending: list[Future[list[TaskSnapshot]]] = []
        done: list[TaskSnapshot] = []
        try:
            with aws_call("ListTasks", cluster_arn):
                only = {"serviceName": service_name} if service_name else {}
                pages = self._client.get_paginator("list_tasks").paginate(
                    cluster=cluster_arn,
                    desiredStatus="RUNNING",
                    PaginationConfig={"PageSize": LIST_PAGE_SIZE},
                    **only,  # type: ignore[arg-type]
                )
                for page in pages:
                    for batch in _chunks(page.get("taskArns", []), DESCRIBE_TASKS_BATCH):
                        if self._executor is None:
                            done.extend(self._describe(cluster_arn, batch))
                        else:
                            pending.append(submit_in_context(self._executor, self._describe, cluster_arn, batch))
        except BaseException:
            _cancel(pending)
            raise
        return done + [task for found in _gather(pending) for task in found]

    # -- internals -------------------------------------------------------------------------
    def _describe_services(self, cluster_arn: str, batch: list[str]) -> list[EcsService]:
        """One batch; services that failed for another reason than MISSING are asked again, alone."""
        found: list[EcsService] = []
        wanted, failed, attempts = batch, [], 0
        while attempts <= SERVICE_FAILURE_RETRIES:
            attempts += 1
            with aws_call("DescribeServices", cluster_arn):
                try:
                    response: Any = self._client.describe_services(
                        cluster=cluster_arn, services=wanted, include=["TAGS"]
                    )
                except ClientError as exc:
                    if error_code(exc) == "ClusterNotFoundException":  # no cluster: none of its services exist
                        return found
                    raise
            found += [_to_ecs_service(cluster_arn, raw) for raw in response.get("services", [])]
            failed = [f for f in response.get("failures", []) if f.get("reason") != MISSING]
            if not failed:
                return found
            wanted = [str(f.get("arn", "")) for f in failed]
            if not all(wanted):  # a failure that names no service cannot be asked about again
                break
        reasons = ", ".join(sorted({f"{f.get('arn', '?')}: {f.get('reason', '?')}" for f in failed}))
        raise AwsCallFailed(
            f"DescribeServices on {cluster_arn} failed for {len(failed)} service(s) ({attempts} attempt(s)): {reasons}"
        )

    def _describe(self, cluster_arn: str, batch: list[str]) -> list[TaskSnapshot]:
        with aws_call("DescribeTasks", cluster_arn):
            response = self._client.describe_tasks(cluster=cluster_arn, tasks=batch)
        tasks = response.get("tasks", [])
        # MISSING: the task is gone (stopped since it was listed). Any other failure means a task
        # that may well run was not read: the read failed (a missing task's records would be forgotten).
        failures = [f for f in response.get("failures", []) if f.get("reason") != "MISSING"]
        if failures:
            reasons = sorted({str(f.get("reason")) for f in failures})
            raise AwsCallFailed(
                f"DescribeTasks on {cluster_arn} described {len(tasks)} of {len(batch)} tasks: {reasons}"
            )
        return [_to_task_snapshot(cluster_arn, raw) for raw in tasks]

    def _list(self, operation: str, key: str, **kwargs: Any) -> list[str]:
        paginator = self._client.get_paginator(operation)  # type: ignore[call-overload]
        pages = paginator.paginate(**kwargs, PaginationConfig={"PageSize": LIST_PAGE_SIZE})
        return [item for page in pages for item in page.get(key, [])]


def _gather(futures: list[Future[T]]) -> list[T]:
    """Every future's result in order; on the first failure, cancel those not started and raise it."""
    try:
        return [future.result() for future in futures]
    except BaseException:
        _cancel(futures)
        raise


def _cancel(futures: Iterable[Future[Any]]) -> None:
    for future in futures:
        future.cancel()


def _to_ecs_service(cluster_arn: str, raw: Any) -> EcsService:
    """Collect the Cloud Map service of every discovery name of every deployment, and of every registry."""
    arns = [
        resource.get("discoveryArn", "")
        for deployment in raw.get("deployments", [])
        for resource in deployment.get("serviceConnectResources", [])
    ]
    arns += [registry.get("registryArn", "") for registry in raw.get("serviceRegistries", [])]
    ids = {service_id for arn in arns if (service_id := cloudmap_service_id(arn)) is not None}
    named = [
        (resource.get("discoveryName", "?"), resource.get("discoveryArn", ""))
        for deployment in raw.get("deployments", [])
        for resource in deployment.get("serviceConnectResources", [])
    ] + [("(registry)", registry.get("registryArn", "")) for registry in raw.get("serviceRegistries", [])]
    discovery = tuple(sorted({(name, sid) for name, arn in named if (sid := cloudmap_service_id(arn))}))
    deployments = raw.get("deployments", [])
    created = [d["createdAt"] for d in deployments if isinstance(d.get("createdAt"), datetime)]
    primary = next((d for d in deployments if d.get("status") == "PRIMARY"), deployments[0] if deployments else {})
    connect = primary.get("serviceConnectConfiguration") or {}
    endpoints = tuple(
        (resource["discoveryName"], service_id)
        for resource in primary.get("serviceConnectResources", [])
        if "discoveryName" in resource and (service_id := cloudmap_service_id(resource.get("discoveryArn", "")))
    )
    return EcsService(
        cluster_arn=cluster_arn,
        service_name=raw["serviceName"],
        service_arn=raw["serviceArn"],
        cloudmap_service_ids=frozenset(ids),
        tags=tuple((t["key"], t["value"]) for t in raw.get("tags", []) if "key" in t and "value" in t),
        service_connect=bool(connect.get("enabled")) or bool(endpoints),
        namespace=connect.get("namespace"),
        endpoints=endpoints,
        deployment_in_progress=len(deployments) > 1 or primary.get("rolloutState") == "IN_PROGRESS",
        discovery=discovery,
        running_count=_count(raw.get("runningCount")),
        task_definitions=tuple(sorted({str(d["taskDefinition"]) for d in deployments if d.get("taskDefinition")})),
        deployed_since=min(created, default=None) if len(created) == len(deployments) else None,
        active=raw.get("status") != "INACTIVE",
    )


def _count(value: Any) -> int:
    return value if isinstance(value, int) and value >= 0 else 0


class EcsServiceUpdater:
    """The ECS writes: a new deployment of a service (start order), stopping a task (replacement)."""

    def __init__(self, client: ECSClient) -> None:
        self._client = client

    def force_new_deployment(self, cluster_arn: str, service_name: str) -> None:
        with aws_call("UpdateService", f"{cluster_arn} {service_name}"):
            self._client.update_service(cluster=cluster_arn, service=service_name, forceNewDeployment=True)

    def stop_task(self, cluster_arn: str, task_arn: str, reason: str) -> None:
        with aws_call("StopTask", task_arn):
            self._client.stop_task(cluster=cluster_arn, task=task_arn, reason=reason[:255])


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
