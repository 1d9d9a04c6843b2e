"""Cloud Map: list a service's instances, read when it was created, deregister one instance.

``DeregisterInstance`` is asynchronous: it answers with an ``OperationId`` and Cloud Map does the
work afterwards (operation status ``SUBMITTED``, then ``PENDING``, then ``SUCCESS`` or ``FAIL``;
see the Cloud Map API reference, ``Operation``). So a deregistration is followed with
``GetOperation`` a few times, at most ``OPERATION_POLL_WAITS`` apart (under 2 s in all, and never
past the AWS deadline): ``FAIL`` raises ``AwsCallFailed`` (the core records the deregistration as
failed, so ``DeregistrationErrors`` counts it and the reactor's event is retried). An operation
still running when the polls (or the time before the deadline) are used up is logged (``Cloud Map
deregistration still in progress``) and counted as removed: Cloud Map accepted it, and nearly all
finish within a second. (The core has no outcome for "accepted, not confirmed"; adding one would
mean a new ``Outcome`` and ``RemovalResult`` handled in ``core/deregistration.py``.)
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from cloudmap_reactor.adapters.deadline import MIN_ATTEMPT_SECONDS, DeadlineExceeded, remaining_seconds
from cloudmap_reactor.adapters.errors import aws_call, error_code
from cloudmap_reactor.core.ports import AwsCallFailed, RemovalResult

if TYPE_CHECKING:
    from mypy_boto3_servicediscovery import ServiceDiscoveryClient

# Cloud Map has no such instance, or no such service any more: there is nothing left to route to.
_GONE = {"InstanceNotFound", "ServiceNotFound"}
# A deregistration of this very instance is already in progress (its operation is followed instead).
_IN_PROGRESS = {"DuplicateRequest"}
# Seconds to wait before each GetOperation of a deregistration: the first is asked at once.
OPERATION_POLL_WAITS = (0.0, 0.25, 0.5, 1.0)
SUCCESS, FAIL = "SUCCESS", "FAIL"

# The application's Powertools logger (observability.py) is this standard logger; reached by name so
# that the adapters do not import Powertools.
_log = logging.getLogger(os.environ.get("POWERTOOLS_SERVICE_NAME") or "cloudmap-reactor")


class CloudMapDeregistrar:
    """Cloud Map as the core sees it: list a service's instances, deregister one instance."""

    def __init__(self, client: ServiceDiscoveryClient, *, sleep: Callable[[float], None] = time.sleep) -> None:
        self._client = client
        self._sleep = sleep

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
            operation_id = self._client.register_instance(
                ServiceId=cloudmap_service_id, InstanceId=instance_id, Attributes=dict(attributes)
            ).get("OperationId")
        if operation_id:
            self._follow(operation_id, f"{cloudmap_service_id}/{instance_id}", "RegisterInstance")

    def deregister_instance(self, cloudmap_service_id: str, instance_id: str) -> RemovalResult:
        """Idempotent: an instance that is already gone is not an error. A failed operation is."""
        target = f"{cloudmap_service_id}/{instance_id}"
        operation_id: str | None
        with aws_call("DeregisterInstance", target):
            try:
                operation_id = self._client.deregister_instance(
                    ServiceId=cloudmap_service_id, InstanceId=instance_id
                ).get("OperationId")
            except ClientError as exc:
                code = error_code(exc)
                if code in _GONE:
                    return RemovalResult.ALREADY_GONE
                if code not in _IN_PROGRESS:
                    raise
                operation_id = _duplicate_operation_id(exc)
        if operation_id:
            self._follow(operation_id, target)
        return RemovalResult.REMOVED

    def _follow(self, operation_id: str, target: str, name: str = "DeregisterInstance") -> None:
        """Poll the operation until it ends, the polls run out or the deadline comes; raise if it failed.

        Running out of polls or of time leaves the operation unconfirmed, not failed: it is logged
        and counted as removed. A ``GetOperation`` that fails (after botocore's retries) raises.
        """
        status = "SUBMITTED"
        for wait in OPERATION_POLL_WAITS:
            left = remaining_seconds()
            if left is not None and wait + MIN_ATTEMPT_SECONDS > left:
                break  # no time left to wait and ask again before the deadline
            if wait:
                self._sleep(wait)
            try:
                with aws_call("GetOperation", f"{operation_id} ({name} {target})"):
                    operation: Any = self._client.get_operation(OperationId=operation_id)["Operation"]
            except DeadlineExceeded:
                break
            status = str(operation.get("Status", ""))
            if status == SUCCESS:
                return
            if status == FAIL:
                raise AwsCallFailed(
                    f"{name} on {target} failed: operation {operation_id} ended FAIL "
                    f"({operation.get('ErrorCode', '?')}: {operation.get('ErrorMessage', 'no message')})"
                )
        _log.warning(
            "Cloud Map deregistration still in progress; counted as removed"
            if name == "DeregisterInstance"
            else "Cloud Map registration still in progress; counted as registered",
            extra={"operation_id": operation_id, "operation_status": status, "target": target},
        )


def _duplicate_operation_id(exc: ClientError) -> str | None:
    """``DuplicateRequest`` names the operation already deregistering the instance."""
    value = exc.response.get("DuplicateOperationId")
    return value if isinstance(value, str) and value else None
