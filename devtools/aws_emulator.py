"""Make moto's ECS answer the way real ECS does for Service Connect. Used by the tests, the demo and the bench.

moto (the local AWS emulator) differs from ECS in ways that matter here; this module closes each
gap the way AWS behaves, without touching our code under test:

1. Deployments carry no ``serviceConnectResources``: ``FleetBuilder.create_service`` writes them
   on the service's deployments, as ECS does when Service Connect is on.
2. No API can set a task's ``healthStatus``: ``FleetBuilder.set_health`` sets it; new tasks answer
   ``UNKNOWN`` (AWS's value for a task without a container health check).
3. ``ListTasks(serviceName=…)`` is ignored: ``aws_like_ecs`` filters on the task's ``group``.
4. ``DescribeTasks`` walks a task one lifecycle step per call, looks in every cluster, scans every
   task for every id, and takes any number of tasks: ``aws_like_ecs`` answers from the named
   cluster only, by id, without touching the task, and refuses more than 100 tasks (AWS's limit).
   ``DescribeServices`` likewise refuses more than 10 services.
5. ``ListTasks``, ``ListServices`` and ``ListClusters`` ignore ``maxResults``/``nextToken`` and
   return everything at once: ``aws_like_ecs`` pages them as AWS does (at most 100 per page;
   ListServices defaults to 10), so call counts measured here are the ones AWS would see.
6. A cluster ARN is resolved by its last segment alone, so ``arn:aws:ecs:eu-west-1:210987654321:cluster/prod``
   would name our ``prod``: ``aws_like_ecs`` refuses ARNs of another partition, region or account
   (``ClusterNotFoundException``), as ECS does.
7. Cloud Map (not ECS, but the same fixture) finishes every operation at once: ``GetOperation``
   answers ``SUCCESS`` straight after ``DeregisterInstance`` and an operation cannot fail. AWS
   answers ``SUBMITTED`` or ``PENDING`` while it works, then ``SUCCESS``, or ``FAIL`` with
   ``ErrorCode`` and ``ErrorMessage`` (Cloud Map API reference, ``Operation``: ``Status`` is one of
   ``SUBMITTED | PENDING | SUCCESS | FAIL``; ``ErrorCode`` e.g. ``INTERNAL_FAILURE``,
   ``THROTTLED_REQUEST``), and a failed deregistration leaves the instance registered.
   ``FleetBuilder.script_operations`` makes the next deregistrations answer given statuses, one
   per ``GetOperation``; without it moto's behaviour (at once ``SUCCESS``, the shape AWS uses for
   a finished operation) is kept.

8. ``DescribeServices`` answers the ``runningCount`` of the environment variable
   ``MOTO_ECS_SERVICE_RUNNING`` (0), whatever runs: ``aws_like_ecs`` answers, as ECS does, the
   number of the service's tasks that are ``RUNNING`` (``group`` ``service:<name>``).
9. A task definition has no container health check unless registered with one, as in AWS; a
   task's ``healthStatus`` can only leave ``UNKNOWN`` with one. ``FleetBuilder.create_service``
   registers its task definition with a container ``healthCheck`` unless ``health_check=False``.
   A task never starts before its service's deployment was created: ``start_tasks`` with an
   earlier ``started_at`` moves the deployments' ``createdAt`` back to it.
10. ``ListServices`` lists deleted services too: ECS does not (a deleted service is ``DRAINING``
    then ``INACTIVE``, "no longer visible in the ListServices API operation", while
    ``DescribeServices`` still answers for it), so ``aws_like_ecs`` lists ``ACTIVE`` ones only.

Everything else goes through the real AWS APIs (boto3 against moto): clusters, task definitions,
``RunTask`` with ``group="service:<name>"`` (what the ECS scheduler does for a service's tasks),
Cloud Map namespaces, services and ``RegisterInstance`` under the task id (what Service Connect
does). It works in-process (``moto.mock_aws``) and behind ``moto.server.ThreadedMotoServer``
started in the same process (the demo).
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from unittest import mock

from moto.core.models import DEFAULT_ACCOUNT_ID
from moto.core.responses import ActionResult
from moto.ecs import models as ecs_models
from moto.ecs.exceptions import ClusterNotFoundException, InvalidParameterException
from moto.ecs.responses import EC2ContainerServiceResponse
from moto.servicediscovery import models as cloudmap_models
from moto.utilities.utils import get_partition

if TYPE_CHECKING:
    from mypy_boto3_ecs import ECSClient
    from mypy_boto3_servicediscovery import ServiceDiscoveryClient

HEALTH_STATUSES = ("HEALTHY", "UNHEALTHY", "UNKNOWN")
OPERATION_STATUSES = ("SUBMITTED", "PENDING", "SUCCESS", "FAIL")
MAX_DESCRIBE_TASKS = 100
MAX_DESCRIBE_SERVICES = 10
# List operation -> (result key, AWS's default page size). AWS's maximum page size is 100.
_PAGED = {"list_tasks": ("taskArns", 100), "list_services": ("serviceArns", 10), "list_clusters": ("clusterArns", 100)}


@dataclass
class OperationScript:
    """Statuses that ``GetOperation`` answers for one operation, one per call (the last one sticks)."""

    statuses: tuple[str, ...]
    error_code: str = "INTERNAL_FAILURE"
    error_message: str = "injected failure"
    reads: int = 0

    def next_status(self) -> str:
        status = self.statuses[min(self.reads, len(self.statuses) - 1)]
        self.reads += 1
        return status


@dataclass
class _CloudMapOperations:
    """Gap 7: the script for the next deregistrations, and the script of each scripted operation."""

    next_deregistrations: OperationScript | None = None
    scripts: dict[str, OperationScript] = field(default_factory=dict)


_OPERATIONS = _CloudMapOperations()


@contextmanager
def aws_like_ecs() -> Iterator[None]:
    """Patch moto's ECS (and Cloud Map operations) to behave like AWS for the duration (gaps 2-7 of the module doc)."""
    backend = ecs_models.EC2ContainerServiceBackend
    _OPERATIONS.next_deregistrations = None
    _OPERATIONS.scripts.clear()
    with ExitStack() as patches:
        patches.enter_context(mock.patch.object(backend, "_get_cluster", _own_clusters_only(backend._get_cluster)))
        patches.enter_context(mock.patch.object(ecs_models.Task, "health_status", "UNKNOWN", create=True))
        patches.enter_context(mock.patch.object(backend, "list_tasks", _list_tasks_by_service(backend.list_tasks)))
        patches.enter_context(mock.patch.object(backend, "describe_tasks", _describe_tasks))
        patches.enter_context(mock.patch.object(backend, "list_services", _active_services(backend.list_services)))
        patches.enter_context(
            mock.patch.object(backend, "describe_services", _at_most_10_services(backend.describe_services))
        )
        for operation, (key, default_page) in _PAGED.items():
            original = getattr(EC2ContainerServiceResponse, operation)
            patches.enter_context(
                mock.patch.object(EC2ContainerServiceResponse, operation, _paged(original, key, default_page))
            )
        cloudmap = cloudmap_models.ServiceDiscoveryBackend
        patches.enter_context(
            mock.patch.object(cloudmap, "deregister_instance", _scripted_deregistration(cloudmap.deregister_instance))
        )
        patches.enter_context(mock.patch.object(cloudmap, "get_operation", _scripted_status(cloudmap.get_operation)))
        cloudmap_operation = cloudmap_models.Operation
        patches.enter_context(mock.patch.object(cloudmap_operation, "to_json", _with_error(cloudmap_operation.to_json)))
        yield


def _own_clusters_only(original: Callable[..., Any]) -> Callable[..., Any]:
    def get_cluster(self: Any, name: str) -> Any:
        own = f"arn:{get_partition(self.region_name)}:ecs:{self.region_name}:{self.account_id}:cluster/"
        if name.startswith("arn:") and not name.startswith(own):
            raise ClusterNotFoundException
        return original(self, name)

    return get_cluster


def _list_tasks_by_service(original: Callable[..., list[Any]]) -> Callable[..., list[Any]]:
    def list_tasks(self: Any, *args: Any, **kwargs: Any) -> list[Any]:
        # (cluster, container instance, family, started by, service name, desired status): moto's
        # response passes them by position.
        values = list(args) + [None] * (6 - len(args))
        service_name = kwargs.pop("service_name", None) or values[4]
        values[4] = None
        tasks = original(self, *values, **kwargs)
        if service_name:
            tasks = [t for t in tasks if t.group == f"service:{service_name.split('/')[-1]}"]
        return tasks

    return list_tasks


def _active_services(original: Callable[..., list[str]]) -> Callable[..., list[str]]:
    def list_services(self: Any, *args: Any, **kwargs: Any) -> list[str]:
        status = {service.arn: service.status for service in self.services.values()}
        return [arn for arn in original(self, *args, **kwargs) if status.get(arn) == "ACTIVE"]

    return list_services


def _describe_tasks(self: Any, cluster_str: str, tasks: list[str]) -> list[Any]:
    cluster = self._get_cluster(cluster_str)
    if not tasks:
        raise InvalidParameterException("Tasks cannot be empty.")
    if len(tasks) > MAX_DESCRIBE_TASKS:
        raise InvalidParameterException(f"Tasks can have at most {MAX_DESCRIBE_TASKS} items.")
    by_id = {task.id: task for task in self.tasks.get(cluster.name, {}).values()}
    wanted = (arn.rsplit("/", 1)[-1] for arn in tasks)
    return [by_id[task_id] for task_id in wanted if task_id in by_id]


def _at_most_10_services(original: Callable[..., Any]) -> Callable[..., Any]:
    def describe_services(self: Any, cluster_str: str, names: list[str]) -> Any:
        if len(names) > MAX_DESCRIBE_SERVICES:
            raise InvalidParameterException(f"Services can have at most {MAX_DESCRIBE_SERVICES} items.")
        services, failures = original(self, cluster_str, names)
        running: dict[str, Counter[str]] = {}  # cluster -> RUNNING tasks per group, counted once per call (50k tasks)
        for service in services:  # gap 8: runningCount counts the service's RUNNING tasks
            if service.cluster_name not in running:
                tasks = self.tasks.get(service.cluster_name, {}).values()
                running[service.cluster_name] = Counter(t.group for t in tasks if t.last_status == "RUNNING")
            service.running_count = running[service.cluster_name][f"service:{service.name}"]
        return services, failures

    return describe_services


def _scripted_deregistration(original: Callable[..., str]) -> Callable[..., str]:
    """A deregistration scripted to end in FAIL leaves the instance registered, as in AWS."""

    def deregister_instance(self: Any, service_id: str, instance_id: str) -> str:
        script = _OPERATIONS.next_deregistrations
        if script is None:
            return original(self, service_id, instance_id)
        if script.statuses[-1] == "FAIL":
            self.get_instance(service_id, instance_id)  # InstanceNotFound as before
            operation_id: str = self._create_operation("DEREGISTER_INSTANCE", targets={"INSTANCE": instance_id})
        else:
            operation_id = original(self, service_id, instance_id)
        _OPERATIONS.scripts[operation_id] = OperationScript(script.statuses, script.error_code, script.error_message)
        return operation_id

    return deregister_instance


def _scripted_status(original: Callable[..., Any]) -> Callable[..., Any]:
    def get_operation(self: Any, operation_id: str) -> Any:
        operation = original(self, operation_id)
        script = _OPERATIONS.scripts.get(operation_id)
        if script is not None:
            operation.status = script.next_status()
            if operation.status == "FAIL":
                operation.error_code, operation.error_message = script.error_code, script.error_message
        return operation

    return get_operation


def _with_error(original: Callable[..., dict[str, Any]]) -> Callable[..., dict[str, Any]]:
    """``ErrorCode`` and ``ErrorMessage`` in the full shape of a failed operation, as AWS answers."""

    def to_json(self: Any, short: bool = False) -> dict[str, Any]:
        body = original(self, short=short)
        if not short and getattr(self, "error_code", None):
            body.update(ErrorCode=self.error_code, ErrorMessage=self.error_message)
        return body

    return to_json


def _paged(original: Callable[..., ActionResult], key: str, default_page: int) -> Callable[..., ActionResult]:
    def list_page(self: Any) -> ActionResult:
        everything: list[str] = original(self).result[key]  # type: ignore[index]
        page_size = int(self._get_param("maxResults") or default_page)
        if not 1 <= page_size <= 100:
            raise InvalidParameterException("maxResults must be between 1 and 100.")
        start = int(self._get_param("nextToken") or 0)
        body: dict[str, Any] = {key: everything[start : start + page_size]}
        if start + page_size < len(everything):
            body["nextToken"] = str(start + page_size)
        return ActionResult(body)

    return list_page


@dataclass
class SeededService:
    """An ECS service of the fleet with the Cloud Map services its discovery names live in."""

    cluster_arn: str
    name: str
    arn: str
    cloudmap_service_ids: list[str]
    task_arns: list[str] = field(default_factory=list)


@dataclass
class FleetBuilder:
    """Seed ECS and Cloud Map through their APIs, filling in what only AWS itself can set."""

    ecs: ECSClient
    cloudmap: ServiceDiscoveryClient
    region: str = "us-east-1"
    account_id: str = DEFAULT_ACCOUNT_ID
    _namespace_ids: dict[str, str] = field(default_factory=dict)
    _ips: Iterator[int] = field(default_factory=lambda: itertools.count(10))

    # -- ECS -------------------------------------------------------------------------------
    def create_cluster(self, name: str) -> str:
        return self.ecs.create_cluster(clusterName=name)["cluster"]["clusterArn"]

    def create_service(
        self,
        cluster: str,
        name: str,
        *,
        discovery_names: Sequence[str] = (),
        registry_names: Sequence[str] = (),
        shared_registry_ids: Sequence[str] = (),
        namespace: str = "internal",
        tags: dict[str, str] | None = None,
        service_connect: bool | None = None,
        health_check: bool = True,
    ) -> SeededService:
        """An ECS service. ``discovery_names``: Service Connect on, one Cloud Map service each.

        ``registry_names``: classic service discovery (``serviceRegistries``), one Cloud Map service each;
        ``shared_registry_ids``: existing Cloud Map services to register in too (blue/green services share one).
        ``service_connect=True`` without discovery names: a Service Connect client only (say, WordPress).
        ``health_check=False``: no container health check, so ECS reports its tasks ``UNKNOWN`` (gap 9).
        """
        family = f"{name}-td"
        container: dict[str, Any] = {"name": "app", "image": "public.ecr.aws/nginx/nginx:latest", "memory": 128}
        if health_check:
            container["healthCheck"] = {"command": ["CMD-SHELL", "curl -f http://localhost/ || exit 1"]}
        self.ecs.register_task_definition(family=family, containerDefinitions=[container])  # type: ignore[list-item]
        registry_ids = [self.create_cloudmap_service(namespace, registry) for registry in registry_names]
        registry_ids += list(shared_registry_ids)
        arn = self.ecs.create_service(
            cluster=cluster,
            serviceName=name,
            taskDefinition=family,
            desiredCount=0,
            serviceRegistries=[{"registryArn": self.cloudmap_service_arn(i)} for i in registry_ids],
            tags=[{"key": k, "value": v} for k, v in (tags or {}).items()],
        )["service"]["serviceArn"]
        cluster_arn = self._cluster_arn(cluster)
        ids = [self.create_cloudmap_service(namespace, discovery) for discovery in discovery_names]
        if ids or service_connect:
            deployment = self._deployments(cluster, name)[0]
            deployment["serviceConnectConfiguration"] = {"enabled": True, "namespace": self.namespace_arn(namespace)}
            deployment["serviceConnectResources"] = [
                {"discoveryName": d, "discoveryArn": self.cloudmap_service_arn(i)}
                for d, i in zip(discovery_names, ids, strict=True)
            ]
        return SeededService(cluster_arn=cluster_arn, name=name, arn=arn, cloudmap_service_ids=ids + registry_ids)

    def turn_on_service_connect(
        self, service: SeededService, discovery_names: Sequence[str], *, namespace: str = "internal"
    ) -> list[str]:
        """Service Connect turned on for a running service: its tasks registered in new Cloud Map services."""
        ids = [self.create_cloudmap_service(namespace, discovery) for discovery in discovery_names]
        deployment = self._deployments(service.cluster_arn, service.name)[0]
        deployment["serviceConnectConfiguration"] = {"enabled": True, "namespace": self.namespace_arn(namespace)}
        deployment["serviceConnectResources"] = [
            {"discoveryName": d, "discoveryArn": self.cloudmap_service_arn(i)}
            for d, i in zip(discovery_names, ids, strict=True)
        ]
        service.cloudmap_service_ids.extend(ids)
        for arn in service.task_arns:
            for service_id in ids:
                self.register_task_instance(service_id, service, arn)
        return ids

    def start_rolling_update(self, service: SeededService, *, discovery_names: Sequence[str]) -> list[str]:
        """A new PRIMARY deployment with other discovery names; the old one stays ACTIVE with its tasks."""
        ids = [self.create_cloudmap_service("internal", d) for d in discovery_names]
        deployments = self._deployments(service.cluster_arn, service.name)
        for old in deployments:
            old["status"] = "ACTIVE"
        deployments.insert(
            0,
            {
                **deployments[0],
                "id": f"ecs-svc/{len(deployments)}{service.name}",
                "status": "PRIMARY",
                "rolloutState": "IN_PROGRESS",
                "serviceConnectResources": [
                    {"discoveryName": d, "discoveryArn": self.cloudmap_service_arn(i)}
                    for d, i in zip(discovery_names, ids, strict=True)
                ],
            },
        )
        service.cloudmap_service_ids.extend(ids)
        return ids

    def start_tasks(
        self,
        service: SeededService,
        count: int,
        *,
        register_in: Sequence[str] | None = None,
        task_ids: Sequence[str] = (),
        started_at: datetime | None = None,
        addresses: Sequence[tuple[str, int]] = (),
    ) -> list[str]:
        """Tasks the ECS scheduler starts for a service, registered in Cloud Map as Service Connect does.

        ``task_ids`` pins the ids (moto picks random ones), so that recorded events match the tasks.
        ``addresses`` pins the (IPv4, port) each task registers, say a local HTTP server to probe.
        """
        tasks = self.ecs.run_task(
            cluster=service.cluster_arn,
            taskDefinition=f"{service.name}-td",
            count=count,
            launchType="FARGATE",
            group=f"service:{service.name}",
            startedBy=f"ecs-svc/{abs(hash(service.name)) % 10**12}",
        )["tasks"]
        arns = [t["taskArn"] for t in tasks]
        for index, wanted_id in enumerate(task_ids[:count]):
            arns[index] = self._rename_task(arns[index], wanted_id)
        if started_at is not None:  # gap 9: its deployment existed before the task started
            for deployment in self._deployments(service.cluster_arn, service.name):
                created = deployment.get("createdAt")
                if isinstance(created, datetime) and created.replace(tzinfo=created.tzinfo or UTC) > started_at:
                    deployment["createdAt"] = started_at
        for index, arn in enumerate(arns):
            self._task(arn).started_at = started_at or datetime.now(UTC)
            address = addresses[index] if index < len(addresses) else None
            for service_id in service.cloudmap_service_ids if register_in is None else register_in:
                self.register_task_instance(service_id, service, arn, address=address)
        service.task_arns.extend(arns)
        return arns

    def run_standalone_task(self, cluster: str, family: str) -> str:
        """A task started by RunTask outside any service (``group`` = ``family:…``)."""
        self.ecs.register_task_definition(
            family=family,
            containerDefinitions=[{"name": "job", "image": "public.ecr.aws/docker/library/busybox", "memory": 64}],
        )
        return self.ecs.run_task(cluster=cluster, taskDefinition=family, launchType="FARGATE")["tasks"][0]["taskArn"]

    def set_health(self, task_arn: str, health_status: str) -> None:
        """What ECS does when container health checks pass or fail (no API can do this)."""
        if health_status not in HEALTH_STATUSES:
            raise ValueError(f"health status must be one of {HEALTH_STATUSES}")
        self._task(task_arn).health_status = health_status

    def begin_stopping(self, task_arn: str, reason: str = "Scaling activity initiated by deployment") -> None:
        """ECS decided to stop the task: desired STOPPED, last status still RUNNING (then DEACTIVATING)."""
        task = self._task(task_arn)
        task.desired_status = "STOPPED"
        task.stopped_reason = reason

    # -- Cloud Map -------------------------------------------------------------------------
    def create_cloudmap_service(self, namespace: str, name: str) -> str:
        namespace_id = self._namespace_ids.get(namespace)
        if namespace_id is None:
            operation = self.cloudmap.create_http_namespace(Name=namespace)["OperationId"]
            namespace_id = self.cloudmap.get_operation(OperationId=operation)["Operation"]["Targets"]["NAMESPACE"]
            self._namespace_ids[namespace] = namespace_id
        return self.cloudmap.create_service(Name=name, NamespaceId=namespace_id)["Service"]["Id"]

    def namespace_arn(self, namespace: str) -> str:
        if namespace not in self._namespace_ids:
            self.create_cloudmap_service(namespace, f"{namespace}-placeholder")
        return f"arn:aws:servicediscovery:{self.region}:{self.account_id}:namespace/{self._namespace_ids[namespace]}"

    def cloudmap_service_arn(self, service_id: str) -> str:
        return f"arn:aws:servicediscovery:{self.region}:{self.account_id}:service/{service_id}"

    def register_task_instance(
        self, service_id: str, service: SeededService, task_arn: str, *, address: tuple[str, int] | None = None
    ) -> None:
        """Register the task under its task id, with the attributes Service Connect writes."""
        task_id = task_arn.rsplit("/", 1)[-1]
        ip, port = address or (self._next_ip(), 8080)
        self.cloudmap.register_instance(
            ServiceId=service_id,
            InstanceId=task_id,
            Attributes={
                "AWS_INSTANCE_IPV4": ip,
                "AWS_INSTANCE_PORT": str(port),
                "ECS_CLUSTER_NAME": service.cluster_arn.rsplit("/", 1)[-1],
                "ECS_SERVICE_NAME": service.name,
                "ECS_TASK_DEFINITION_FAMILY": f"{service.name}-td",
            },
        )

    def script_operations(
        self,
        *statuses: str,
        error_code: str = "INTERNAL_FAILURE",
        error_message: str = "injected failure",
    ) -> None:
        """Every later ``DeregisterInstance`` answers these statuses to its ``GetOperation`` calls (gap 7).

        ``script_operations("PENDING", "SUCCESS")``: pending at the first look, done at the second;
        ``script_operations("FAIL")``: fails, and the instance stays registered. No statuses: back to
        moto's (``SUCCESS`` at once).
        """
        if any(status not in OPERATION_STATUSES for status in statuses):
            raise ValueError(f"operation statuses are {OPERATION_STATUSES}")
        _OPERATIONS.next_deregistrations = (
            OperationScript(statuses, error_code=error_code, error_message=error_message) if statuses else None
        )

    def instance_ids(self, service_id: str) -> set[str]:
        """The ids Cloud Map has registered in one of its services right now."""
        pages = self.cloudmap.get_paginator("list_instances").paginate(ServiceId=service_id)
        return {i["Id"] for page in pages for i in page["Instances"]}

    # -- internals -------------------------------------------------------------------------
    def _backend(self) -> Any:
        return ecs_models.ecs_backends[self.account_id][self.region]

    def _cluster_arn(self, cluster: str) -> str:
        return str(self.ecs.describe_clusters(clusters=[cluster])["clusters"][0]["clusterArn"])

    def _deployments(self, cluster: str, service_name: str) -> list[dict[str, Any]]:
        deployments: list[dict[str, Any]] = self._backend()._get_service(cluster, service_name).deployments
        return deployments

    def _next_ip(self) -> str:
        n = next(self._ips)
        return f"10.0.{n // 250}.{n % 250 + 1}"

    def _rename_task(self, task_arn: str, task_id: str) -> str:
        task = self._task(task_arn)
        tasks = self._backend().tasks[task.cluster_name]
        del tasks[task_arn]
        task.id = task_id
        tasks[task.task_arn] = task
        return str(task.task_arn)

    def _task(self, task_arn: str) -> Any:
        for tasks in self._backend().tasks.values():  # per cluster, by ARN: seeding 50k tasks stays linear
            if task_arn in tasks:
                return tasks[task_arn]
        raise KeyError(task_arn)
