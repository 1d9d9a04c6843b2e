"""Cloud Map writes: deregister one instance."""

from __future__ import annotations

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
    def __init__(self, client: ServiceDiscoveryClient) -> None:
        self._client = client

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
