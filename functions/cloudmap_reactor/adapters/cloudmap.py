"""Cloud Map: list a service's instances, read when it was created, deregister one instance."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from botocore.exceptions import ClientError

from cloudmap_reactor.adapters.errors import aws_call, error_code
from cloudmap_reactor.core.ports import RemovalResult

if TYPE_CHECKING:
    from mypy_boto3_servicediscovery import ServiceDiscoveryClient

# Cloud Map has no such instance, or no such service any more: there is nothing left to route to.
_GONE = {"InstanceNotFound", "ServiceNotFound"}
# A deregistration of this very instance is already in progress.
_IN_PROGRESS = {"DuplicateRequest"}


class CloudMapDeregistrar:
    """Cloud Map as the core sees it: list a service's instances, deregister one instance."""

    def __init__(self, client: ServiceDiscoveryClient) -> None:
        self._client = client

    def list_instances(self, cloudmap_service_id: str) -> dict[str, dict[str, str]]:
        """Instance id -> attributes of every instance in one Cloud Map service (100 per page, the maximum)."""
        with aws_call("ListInstances", cloudmap_service_id):
            pages = self._client.get_paginator("list_instances").paginate(
                ServiceId=cloudmap_service_id, PaginationConfig={"PageSize": 100}
            )
            return {
                instance["Id"]: dict(instance.get("Attributes", {}))
                for page in pages
                for instance in page.get("Instances", [])
            }

    def service_created_at(self, cloudmap_service_id: str) -> datetime:
        """When the Cloud Map service (a Service Connect endpoint) was created."""
        with aws_call("GetService", cloudmap_service_id):
            created = self._client.get_service(Id=cloudmap_service_id)["Service"]["CreateDate"]
        return created if created.tzinfo else created.replace(tzinfo=UTC)

    def register_instance(self, cloudmap_service_id: str, instance_id: str, attributes: Mapping[str, str]) -> None:
        """Put a quarantined instance back: the recorded id and attributes, nothing added or changed."""
        with aws_call("RegisterInstance", f"{cloudmap_service_id}/{instance_id}"):
            self._client.register_instance(
                ServiceId=cloudmap_service_id, InstanceId=instance_id, Attributes=dict(attributes)
            )

    def deregister_instance(self, cloudmap_service_id: str, instance_id: str) -> RemovalResult:
        """Idempotent: an instance that is already gone is not an error."""
        with aws_call("DeregisterInstance", f"{cloudmap_service_id}/{instance_id}"):
            try:
                self._client.deregister_instance(ServiceId=cloudmap_service_id, InstanceId=instance_id)
            except ClientError as exc:
                code = error_code(exc)
                if code in _GONE:
                    return RemovalResult.ALREADY_GONE
                if code in _IN_PROGRESS:
                    return RemovalResult.REMOVED
                raise
        return RemovalResult.REMOVED
