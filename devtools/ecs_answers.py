"""ECS answers shaped like real ones, for measuring and testing the client-side cost of parsing them.

A ``DescribeTasks`` task of a Fargate Service Connect service carries much more than the fields a
pass reads: an application container and the Service Connect agent container (each with its
network interface and runtime id), the task's ENI attachment (subnet, ENI id, MAC, DNS name, IP)
and its Service Connect attachment, attributes, overrides, tags and half a dozen timestamps (the
members of ``Task``, ``Container`` and ``Attachment`` in the ECS API reference). The task and
service answers here have those members, with made-up values. ``canned_client`` serves them
through a ``before-send`` hook (botocore's documented way to answer a request without sending it).
"""

from __future__ import annotations

import json
from typing import Any

import boto3
from botocore.awsrequest import AWSResponse

REGION = "us-east-1"
ACCOUNT = "123456789012"
CLUSTER = "prod"
CLUSTER_ARN = f"arn:aws:ecs:{REGION}:{ACCOUNT}:cluster/{CLUSTER}"
STARTED = 1_764_600_000.0


def task_id(service: int, index: int) -> str:
    return f"{service:08x}{index:024x}"


def task_arn(service: int, index: int) -> str:
    return f"arn:aws:ecs:{REGION}:{ACCOUNT}:task/{CLUSTER}/{task_id(service, index)}"


def fargate_task(service: int, index: int, *, health: str = "HEALTHY") -> dict[str, Any]:
    """One RUNNING task of ``svc-<service>`` as ``DescribeTasks`` answers it (Fargate, awsvpc, Service Connect)."""
    arn = task_arn(service, index)
    name = f"svc-{service:04d}"
    ip = f"10.{service // 250 % 250}.{service % 250}.{index % 250 + 1}"
    eni = f"eni-{service:08x}{index:09x}"
    attachment = f"{service:08x}-{index:04x}-4a1b-9c2d-{index:012x}"

    def container(container_name: str, image: str, suffix: str) -> dict[str, Any]:
        return {
            "containerArn": f"arn:aws:ecs:{REGION}:{ACCOUNT}:container/{CLUSTER}/{task_id(service, index)}/{suffix}",
            "taskArn": arn,
            "name": container_name,
            "image": image,
            "imageDigest": "sha256:" + "ab12" * 16,
            "runtimeId": f"{task_id(service, index)}-{suffix[:10]}",
            "lastStatus": "RUNNING",
            "networkBindings": [],
            "networkInterfaces": [{"attachmentId": attachment, "privateIpv4Address": ip}],
            "healthStatus": health,
            "cpu": "0",
            "memoryReservation": "128",
        }

    return {
        "attachments": [
            {
                "id": attachment,
                "type": "ElasticNetworkInterface",
                "status": "ATTACHED",
                "details": [
                    {"name": "subnetId", "value": "subnet-0a1b2c3d4e5f60718"},
                    {"name": "networkInterfaceId", "value": eni},
                    {"name": "macAddress", "value": "0a:1b:2c:3d:4e:5f"},
                    {"name": "privateDnsName", "value": f"ip-{ip.replace('.', '-')}.ec2.internal"},
                    {"name": "privateIPv4Address", "value": ip},
                ],
            },
            {
                "id": f"sc-{attachment}",
                "type": "Service Connect",
                "status": "ATTACHED",
                "details": [
                    {"name": "portName", "value": "http"},
                    {"name": "discoveryName", "value": name},
                    {"name": "clientAliases", "value": f'[{{"port":80,"dnsName":"{name}"}}]'},
                ],
            },
        ],
        "attributes": [{"name": "ecs.cpu-architecture", "value": "arm64"}],
        "availabilityZone": f"{REGION}{'abc'[index % 3]}",
        "capacityProviderName": "FARGATE",
        "clusterArn": CLUSTER_ARN,
        "connectivity": "CONNECTED",
        "connectivityAt": STARTED - 40.123,
        "containers": [
            container("app", f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/{name}:1.4.2", "app"),
            container("ecs-service-connect-agent", "public.ecr.aws/ecs/service-connect-agent:v1.29", "sc-agent"),
        ],
        "cpu": "512",
        "createdAt": STARTED - 45.5,
        "desiredStatus": "RUNNING",
        "enableExecuteCommand": False,
        "ephemeralStorage": {"sizeInGiB": 20},
        "fargateEphemeralStorage": {"sizeInGiB": 20},
        "group": f"service:{name}",
        "healthStatus": health,
        "lastStatus": "RUNNING",
        "launchType": "FARGATE",
        "memory": "1024",
        "overrides": {
            "containerOverrides": [{"name": "app"}, {"name": "ecs-service-connect-agent"}],
            "inferenceAcceleratorOverrides": [],
        },
        "platformVersion": "1.4.0",
        "platformFamily": "Linux",
        "pullStartedAt": STARTED - 30.25,
        "pullStoppedAt": STARTED - 12.75,
        "startedAt": STARTED + index,
        "startedBy": f"ecs-svc/{service:019d}",
        "tags": [{"key": "team", "value": "payments"}, {"key": "env", "value": "prod"}],
        "taskArn": arn,
        "taskDefinitionArn": f"arn:aws:ecs:{REGION}:{ACCOUNT}:task-definition/{name}-td:7",
        "version": 4,
    }


def describe_tasks_body(service: int, count: int = 100, *, missing: int = 0) -> bytes:
    """A ``DescribeTasks`` answer for ``count`` tasks of one service (and ``missing`` MISSING failures)."""
    failures = [
        {"arn": task_arn(service, count + n), "reason": "MISSING", "detail": "task is gone"} for n in range(missing)
    ]
    body = {"tasks": [fargate_task(service, n) for n in range(count)], "failures": failures}
    return json.dumps(body).encode()


def describe_services_body(first: int, count: int = 10) -> bytes:
    """A ``DescribeServices`` answer for ``count`` Service Connect services, with their events as ECS keeps them."""
    services = []
    for service in range(first, first + count):
        name = f"svc-{service:04d}"
        discovery = f"arn:aws:servicediscovery:{REGION}:{ACCOUNT}:service/srv-{service:016x}"
        deployment = {
            "id": f"ecs-svc/{service:019d}",
            "status": "PRIMARY",
            "taskDefinition": f"arn:aws:ecs:{REGION}:{ACCOUNT}:task-definition/{name}-td:7",
            "desiredCount": 20,
            "pendingCount": 0,
            "runningCount": 20,
            "failedTasks": 0,
            "createdAt": STARTED - 86_400,
            "updatedAt": STARTED - 86_000,
            "launchType": "FARGATE",
            "platformVersion": "1.4.0",
            "platformFamily": "Linux",
            "networkConfiguration": {
                "awsvpcConfiguration": {
                    "subnets": ["subnet-0a1b2c3d4e5f60718", "subnet-1a1b2c3d4e5f60718"],
                    "securityGroups": ["sg-0a1b2c3d4e5f60718"],
                    "assignPublicIp": "DISABLED",
                }
            },
            "rolloutState": "COMPLETED",
            "rolloutStateReason": "ECS deployment ecs-svc completed.",
            "serviceConnectConfiguration": {
                "enabled": True,
                "namespace": f"arn:aws:servicediscovery:{REGION}:{ACCOUNT}:namespace/ns-0a1b2c3d4e5f6071",
                "services": [{"portName": "http", "discoveryName": name, "clientAliases": [{"port": 80}]}],
            },
            "serviceConnectResources": [{"discoveryName": name, "discoveryArn": discovery}],
        }
        services.append(
            {
                "serviceArn": f"arn:aws:ecs:{REGION}:{ACCOUNT}:service/{CLUSTER}/{name}",
                "serviceName": name,
                "clusterArn": CLUSTER_ARN,
                "loadBalancers": [],
                "serviceRegistries": [],
                "status": "ACTIVE",
                "desiredCount": 20,
                "runningCount": 20,
                "pendingCount": 0,
                "launchType": "FARGATE",
                "platformVersion": "LATEST",
                "platformFamily": "Linux",
                "taskDefinition": deployment["taskDefinition"],
                "deploymentConfiguration": {
                    "deploymentCircuitBreaker": {"enable": True, "rollback": True},
                    "maximumPercent": 200,
                    "minimumHealthyPercent": 100,
                },
                "deployments": [deployment],
                "roleArn": f"arn:aws:iam::{ACCOUNT}:role/aws-service-role/ecs.amazonaws.com/AWSServiceRoleForECS",
                "events": [
                    {
                        "id": f"{service:08x}-{n:04x}-4a1b-9c2d-0a1b2c3d4e5f",
                        "createdAt": STARTED - 3600 * n,
                        "message": f"(service {name}) has reached a steady state.",
                    }
                    for n in range(100)
                ],
                "createdAt": STARTED - 86_400 * 30,
                "placementConstraints": [],
                "placementStrategy": [],
                "networkConfiguration": deployment["networkConfiguration"],
                "schedulingStrategy": "REPLICA",
                "deploymentController": {"type": "ECS"},
                "tags": [{"key": "cloudmap-reactor:managed", "value": "true"}],
                "createdBy": f"arn:aws:iam::{ACCOUNT}:role/deployer",
                "enableECSManagedTags": True,
                "propagateTags": "SERVICE",
                "enableExecuteCommand": False,
            }
        )
    return json.dumps({"services": services, "failures": []}).encode()


class _Body:
    """The raw body botocore reads an answer from."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    def stream(self, **_: Any) -> Any:
        yield self._data


def canned_client(session: boto3.session.Session, bodies: dict[str, bytes]) -> Any:
    """An ECS client answering each operation in ``bodies`` with that body (HTTP 200), without a network."""
    client = session.client(
        "ecs",
        region_name=REGION,
        endpoint_url="http://127.0.0.1:9",
        aws_access_key_id="bench",
        aws_secret_access_key="bench",  # noqa: S106 - never sent anywhere
    )

    def answer(request: Any, **_: Any) -> AWSResponse:
        operation = request.headers["X-Amz-Target"].decode().rsplit(".", 1)[-1]
        headers: Any = {"x-amzn-RequestId": "bench", "Content-Type": "application/x-amz-json-1.1"}
        return AWSResponse(request.url, 200, headers, _Body(bodies[operation]))

    client.meta.events.register("before-send.ecs", answer)  # type: ignore[arg-type]  # returns the answer
    return client
