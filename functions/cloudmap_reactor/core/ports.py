"""What the core needs from the outside world. Adapters implement these; tests may fake them."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from enum import Enum
from typing import Protocol

from cloudmap_reactor.core.decisions import InstanceKey, ProbeStreak, QuarantineRecord
from cloudmap_reactor.core.model import EcsService, TaskSnapshot
from cloudmap_reactor.core.probing import ProbeResult, ProbeTarget


class AwsCallFailed(Exception):
    """An AWS call failed after the SDK's own retries (throttling, 5xx, timeouts, access denied)."""


class ClusterNotFound(AwsCallFailed):
    """ECS has no such cluster (deleted, or a wrong ARN in the configuration): retrying cannot help."""


class RemovalResult(Enum):
    REMOVED = "removed"
    ALREADY_GONE = "already_gone"


class InstanceRemover(Protocol):
    def deregister_instance(self, cloudmap_service_id: str, instance_id: str) -> RemovalResult:
        """Remove one instance; ``ALREADY_GONE`` when Cloud Map has no such instance or service."""
        ...


class InstanceRegistrar(InstanceRemover, Protocol):
    def register_instance(self, cloudmap_service_id: str, instance_id: str, attributes: Mapping[str, str]) -> None:
        """Register one instance with exactly these attributes (a quarantined instance coming back)."""
        ...


class CloudMapRegistry(InstanceRemover, Protocol):
    def list_instances(self, cloudmap_service_id: str) -> dict[str, dict[str, str]]:
        """Instance id -> attributes (address, port, ...) of every instance registered in one Cloud Map service."""
        ...

    def service_created_at(self, cloudmap_service_id: str) -> datetime:
        """When the Cloud Map service was created (timezone-aware)."""
        ...


class ServiceRedeployer(Protocol):
    def force_new_deployment(self, cluster_arn: str, service_name: str) -> None:
        """Replace every task of the service (they pick up the endpoints that exist now)."""
        ...


class TaskDescriber(Protocol):
    def describe_tasks(self, cluster_arn: str, task_arns: Iterable[str]) -> list[TaskSnapshot]: ...


class TaskStopper(Protocol):
    def stop_task(self, cluster_arn: str, task_arn: str, reason: str) -> None:
        """Stop one task (ECS starts a replacement to keep the service's desired count)."""
        ...


class QuarantineLedger(Protocol):
    def quarantined(self) -> tuple[list[QuarantineRecord], int]:
        """Every quarantine record, and how many stored items could not be read as one."""
        ...

    def record(self, record: QuarantineRecord) -> QuarantineRecord:
        """Write the record (stamped now); raise ``AwsCallFailed`` when it could not be written."""
        ...

    def forget(self, record: QuarantineRecord) -> bool:
        """Delete the record; False when it was already gone."""
        ...

    def load_streaks(self) -> dict[InstanceKey, ProbeStreak]: ...

    def save_streaks(self, streaks: Mapping[InstanceKey, ProbeStreak]) -> None: ...

    def hold_lease(self, owner: str, seconds: float) -> bool:
        """Take or renew the poller's lease; False when another invocation holds it."""
        ...

    def release_lease(self, owner: str) -> None: ...


class ServiceDirectory(Protocol):
    def describe_services(self, cluster_arn: str, service_names_or_arns: Sequence[str]) -> list[EcsService]:
        """Describe services (any number; the adapter batches). Missing services are left out."""
        ...


class FleetReader(ServiceDirectory, Protocol):
    def list_cluster_arns(self) -> list[str]: ...

    def list_service_arns(self, cluster_arn: str) -> list[str]: ...

    def describe_running_tasks(self, cluster_arn: str, service_name: str | None = None) -> list[TaskSnapshot]:
        """Every task of the cluster (or of one of its services) whose desired status is RUNNING, described."""
        ...

    def describe_tasks(self, cluster_arn: str, task_arns: Iterable[str]) -> list[TaskSnapshot]: ...

    def list_task_arns(self, cluster_arn: str, service_name: str | None = None) -> list[str]:
        """The tasks of the cluster (or of one of its services) whose desired status is RUNNING, not described."""
        ...

    def container_health_check(self, task_definition_arn: str) -> bool:
        """Whether any container of the task definition has a health check."""
        ...


class HttpProber(Protocol):
    def probe(self, targets: Sequence[ProbeTarget]) -> list[ProbeResult]:
        """Probe the targets concurrently, in the given order; one result each, within the prober's time bound.

        Targets that cannot be started in time are returned as skipped.
        """
        ...
