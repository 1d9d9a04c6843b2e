"""Make moto's ECS answer the way real ECS does for Service Connect services. Used by every test and the demo.

moto (the local AWS emulator) has four gaps that matter here, and this module closes each the
way AWS behaves, without touching our code under test:

1. Deployments carry no ``serviceConnectResources``: ``FleetBuilder.create_service`` writes them
   on the service's deployments, as ECS does when Service Connect is on.
2. No API can set a task's ``healthStatus``: ``FleetBuilder.set_health`` sets it; new tasks answer
   ``UNKNOWN`` (AWS's value for a task without a container health check).
3. ``ListTasks(serviceName=…)`` is ignored: ``aws_like_ecs`` filters on the task's ``group``.
4. Tasks walk their lifecycle one step on every ``DescribeTasks``: ``aws_like_ecs`` sets moto's
   state manager to manual, so a task stays where ECS would leave it.

Everything else goes through the real AWS APIs (boto3 against moto): clusters, task definitions,
``RunTask`` with ``group="service:<name>"`` (what the ECS scheduler does for a service's tasks),
Cloud Map namespaces, services and ``RegisterInstance`` under the task id (what Service Connect
does). It works in-process (``moto.mock_aws``) and behind ``moto.server.ThreadedMotoServer``
started in the same process (the demo).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from moto.core.models import DEFAULT_ACCOUNT_ID
from moto.ecs import models as ecs_models
from moto.moto_api import state_manager

if TYPE_CHECKING:
    from mypy_boto3_ecs import ECSClient
    from mypy_boto3_servicediscovery import ServiceDiscoveryClient

HEALTH_STATUSES = ("HEALTHY", "UNHEALTHY", "UNKNOWN")
# moto advances a "manual" state after this many describes; ECS never does on its own.
_NEVER = 10**12


@contextmanager
def aws_like_ecs() -> Iterator[None]:
    """Patch moto's ECS backend to behave like ECS for the duration (gaps 2-4 of the module doc)."""
    backend_cls = ecs_models.EC2ContainerServiceBackend
    original_list_tasks = backend_cls.list_tasks

    def list_tasks(self: Any, *args: Any, service_name: str | None = None, **kwargs: Any) -> list[Any]:
        tasks: list[Any] = original_list_tasks(self, *args, **kwargs)
        if service_name:
            tasks = [t for t in tasks if t.group == f"service:{service_name.split('/')[-1]}"]
        return tasks

    had_health = hasattr(ecs_models.Task, "health_status")
    backend_cls.list_tasks = list_tasks  # type: ignore[method-assign]
    ecs_models.Task.health_status = "UNKNOWN"  # type: ignore[attr-defined]
    state_manager.set_transition(model_name="ecs::task", transition={"progression": "manual", "times": _NEVER})
    try:
        yield
    finally:
        backend_cls.list_tasks = original_list_tasks  # type: ignore[method-assign]
        if not had_health:
            del ecs_models.Task.health_status  # type: ignore[attr-defined]
        state_manager.unset_transition(model_name="ecs::task")


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
        namespace: str = "internal",
    ) -> SeededService:
        """An ECS service; with ``discovery_names`` it has Service Connect on, one Cloud Map service each."""
        family = f"{name}-td"
        self.ecs.register_task_definition(
            family=family,
            containerDefinitions=[{"name": "app", "image": "public.ecr.aws/nginx/nginx:latest", "memory": 128}],
        )
        arn = self.ecs.create_service(cluster=cluster, serviceName=name, taskDefinition=family, desiredCount=0)[
            "service"
        ]["serviceArn"]
        cluster_arn = self._cluster_arn(cluster)
        ids = [self.create_cloudmap_service(namespace, discovery) for discovery in discovery_names]
        if ids:
            self._deployments(cluster, name)[0]["serviceConnectResources"] = [
                {"discoveryName": d, "discoveryArn": self.cloudmap_service_arn(i)}
                for d, i in zip(discovery_names, ids, strict=True)
            ]
        return SeededService(cluster_arn=cluster_arn, name=name, arn=arn, cloudmap_service_ids=ids)

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
    ) -> list[str]:
        """Tasks the ECS scheduler starts for a service, registered in Cloud Map as Service Connect does.

        ``task_ids`` pins the ids (moto picks random ones), so that recorded events match the tasks.
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
        for arn in arns:
            self._task(arn).started_at = datetime.now(UTC)
            for service_id in service.cloudmap_service_ids if register_in is None else register_in:
                self.register_task_instance(service_id, service, arn)
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

    def cloudmap_service_arn(self, service_id: str) -> str:
        return f"arn:aws:servicediscovery:{self.region}:{self.account_id}:service/{service_id}"

    def register_task_instance(self, service_id: str, service: SeededService, task_arn: str) -> None:
        """Register the task under its task id, with the attributes Service Connect writes."""
        task_id = task_arn.rsplit("/", 1)[-1]
        self.cloudmap.register_instance(
            ServiceId=service_id,
            InstanceId=task_id,
            Attributes={
                "AWS_INSTANCE_IPV4": self._next_ip(),
                "AWS_INSTANCE_PORT": "8080",
                "ECS_CLUSTER_NAME": service.cluster_arn.rsplit("/", 1)[-1],
                "ECS_SERVICE_NAME": service.name,
                "ECS_TASK_DEFINITION_FAMILY": f"{service.name}-td",
            },
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
        for tasks in self._backend().tasks.values():
            for arn, task in tasks.items():
                if arn == task_arn:
                    return task
        raise KeyError(task_arn)
