"""Turn the core's deregistration records into log lines and metrics (shared by both handlers)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from cloudmap_reactor.core.model import Deregistration, Outcome
from cloudmap_reactor.observability import MetricName, count, count_with_reason, logger


def report_deregistrations(records: Iterable[Deregistration]) -> None:
    """One log record per attempt (cluster/service/task as keys); metrics aggregated by reason."""
    removed: Counter[str] = Counter()
    dry_run: Counter[str] = Counter()
    errors = 0
    for record in records:
        fields = {
            "cluster_arn": record.cluster_arn,
            "ecs_service": record.service_name,
            "task_arn": record.task_arn,
            "cloudmap_service_id": record.cloudmap_service_id,
            "instance_id": record.instance_id,
            "reason": record.reason.value,
            "outcome": record.outcome.value,
        }
        if record.outcome is Outcome.DEREGISTERED:
            removed[record.reason.value] += 1
            logger.info("Deregistered task from Cloud Map", extra=fields)
        elif record.outcome is Outcome.DRY_RUN:
            dry_run[record.reason.value] += 1
            logger.info("DRY_RUN: would deregister task from Cloud Map", extra=fields)
        elif record.outcome is Outcome.ALREADY_GONE:
            logger.info("Instance already gone from Cloud Map", extra=fields)
        else:
            errors += 1
            logger.error("Failed to deregister task from Cloud Map", extra={**fields, "error": record.error})
    for reason, value in removed.items():
        count_with_reason(MetricName.TASKS_DEREGISTERED, reason, value)
    for reason, value in dry_run.items():
        count_with_reason(MetricName.DRY_RUN_DEREGISTRATIONS, reason, value)
    if errors:
        count(MetricName.DEREGISTRATION_ERRORS, errors)
