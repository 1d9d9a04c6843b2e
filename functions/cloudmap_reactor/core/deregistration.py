"""Removing one task from every Cloud Map service of its ECS service, or only saying so (dry run)."""

from __future__ import annotations

from collections.abc import Iterable

from cloudmap_reactor.core.model import Deregistration, Outcome, Reason, task_id
from cloudmap_reactor.core.ports import AwsCallFailed, InstanceRemover, RemovalResult


def deregister_task(
    *,
    cluster_arn: str,
    service_name: str,
    task_arn: str,
    cloudmap_service_ids: Iterable[str],
    reason: Reason,
    remover: InstanceRemover,
    dry_run: bool,
) -> list[Deregistration]:
    """Deregister the task's instance from each Cloud Map service; one failure does not stop the rest."""
    instance_id = task_id(task_arn)
    results: list[Deregistration] = []
    for service_id in sorted(cloudmap_service_ids):
        outcome, error = Outcome.DRY_RUN, None
        if not dry_run:
            try:
                removed = remover.deregister_instance(service_id, instance_id)
                outcome = Outcome.DEREGISTERED if removed is RemovalResult.REMOVED else Outcome.ALREADY_GONE
            except AwsCallFailed as exc:
                outcome, error = Outcome.FAILED, str(exc)
        results.append(
            Deregistration(
                cluster_arn=cluster_arn,
                service_name=service_name,
                task_arn=task_arn,
                cloudmap_service_id=service_id,
                reason=reason,
                outcome=outcome,
                error=error,
            )
        )
    return results
