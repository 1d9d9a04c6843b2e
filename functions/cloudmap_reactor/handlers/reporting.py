"""Turn the core's deregistration records into log lines and metrics (shared by both handlers)."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

from aws_lambda_powertools.metrics import MetricUnit

from cloudmap_reactor.adapters.errors import denied_operation
from cloudmap_reactor.core.decisions import Action, Decision, Deregister, GuardVerdict, Redeploy
from cloudmap_reactor.core.model import Deregistration, Outcome
from cloudmap_reactor.observability import MetricName, count, count_with_reason, logger, metrics
from cloudmap_reactor.poller.acting import Change, LedgerChange
from cloudmap_reactor.poller.scanner import HealthPassResult

# The removal log lines: the dashboard's "Last removals" Logs Insights query selects on these.
REMOVED_MESSAGE = "Deregistered task from Cloud Map"
DRY_RUN_REMOVED_MESSAGE = "DRY_RUN: would deregister task from Cloud Map"


def report_disabled() -> dict[str, Any]:
    """The emergency stop (Enabled=false): say so in the log and in ``Disabled``; nothing else happens."""
    logger.warning("Emergency stop: Enabled=false, this invocation does nothing (no AWS call)")
    count(MetricName.DISABLED)
    return {"status": "disabled"}


def log_decision(decision: Decision) -> None:
    """DEBUG: every action decided and every hold, with its rule or reason (nothing is built when DEBUG is off)."""
    if logger.log_level > logging.DEBUG:
        return
    for action in decision.actions:
        logger.debug("Decided", extra=_describe(action))
    for held in decision.held:
        fields = _describe(held.action) if held.action is not None else {}
        logger.debug("Held back", extra={**fields, "hold": held.why.value, "detail": held.detail})
    for verdict in decision.guard:
        logger.debug("Fail-open guard", extra={**guard_fields(verdict), "holds": verdict.holds})


def _describe(action: Action) -> dict[str, Any]:
    """The log fields of one action: what it is, the rule that chose it, and what it touches."""
    fields: dict[str, Any] = {"action": type(action).__name__, "rule": action.rule.value}
    if isinstance(action, Redeploy):
        service = action.client.service
        return {**fields, "cluster_arn": service.cluster_arn, "ecs_service": service.service_name}
    target = action if isinstance(action, Deregister) else action.record  # Restore, Forget, StopTask
    fields.update(
        cluster_arn=target.cluster_arn,
        ecs_service=target.service_name,
        task_arn=target.task_arn,
        cloudmap_service_id=target.cloudmap_service_id,
        reason=target.reason.value,
    )
    if isinstance(action, Deregister):
        fields["quarantine"] = action.quarantine is not None
    return fields


def guard_fields(verdict: GuardVerdict) -> dict[str, Any]:
    """The fail-open guard's arithmetic for one Cloud Map service, as log fields."""
    return {
        "cloudmap_service_id": verdict.cloudmap_service_id,
        "ecs_service": ",".join(verdict.service_names),
        "running_tasks": verdict.running,
        "unhealthy_tasks": verdict.failing,
        "healthy_registered": verdict.healthy_registered,
        "required_healthy": verdict.required,
        "healthy_percent_after": round(verdict.healthy_percent_after, 1),
    }


def report_ledger(result: HealthPassResult) -> None:
    """Quarantined instances: what came back, what was forgotten or replaced, and the ledger's size and age."""
    report_ledger_changes(result.ledger, now=result.now)
    if result.ledger_unreadable:
        unreadable = {"items": result.ledger_unreadable}
        logger.warning("Ledger items that are not quarantine records were skipped", extra=unreadable)
    count(MetricName.QUARANTINED_INSTANCES, len(result.quarantined))
    metrics.add_metric(
        name=MetricName.OLDEST_QUARANTINE_SECONDS.value, unit=MetricUnit.Seconds, value=result.oldest_quarantine_seconds
    )


def report_ledger_changes(changes: Sequence[LedgerChange], *, now: float) -> None:
    """One log record per quarantined instance registered again, forgotten or replaced; their metrics."""
    restored: Counter[str] = Counter()
    errors = replaced = 0
    for change in changes:
        record = change.record
        fields = {
            "cluster_arn": record.cluster_arn,
            "ecs_service": record.service_name,
            "task_arn": record.task_arn,
            "cloudmap_service_id": record.cloudmap_service_id,
            "instance_id": record.instance_id,
            "reason": record.reason.value,
            "quarantined_seconds": round(now - record.since, 1),
        }
        if change.error is not None:
            logger.error(
                f"Could not {_VERB[change.change]} a quarantined instance", extra={**fields, "error": change.error}
            )
            errors += change.change is Change.RESTORED
        elif change.dry_run:
            logger.info(f"DRY_RUN: would {_VERB[change.change]} a quarantined instance", extra=fields)
        elif change.change is Change.RESTORED:
            restored[record.reason.value] += 1
            logger.info("Registered a recovered task again, with its recorded attributes", extra=fields)
        elif change.change is Change.REPLACED:
            replaced += 1
            logger.warning("Stopped a task quarantined for failed probes (ECS replaces it)", extra=fields)
        else:
            logger.info("Forgot a quarantined task that ECS is stopping or no longer knows", extra=fields)
    report_denied(c.error for c in changes if c.error is not None)
    for reason, value in restored.items():
        count_with_reason(MetricName.TASKS_RESTORED, reason, value)
    if errors:
        count(MetricName.RESTORE_ERRORS, errors)
    if replaced:
        count(MetricName.TASKS_REPLACED, replaced)


_VERB = {Change.RESTORED: "restore", Change.FORGOTTEN: "forget", Change.REPLACED: "stop"}


def report_denied(errors: Iterable[str]) -> None:
    """Failures AWS answered with AccessDenied: one error log and one ``AccessDenied`` count per operation.

    A missing permission never heals by retrying, and it hides behind the generic error of the
    action it stopped: this names it (``Reason``: the operation) so that an alarm can.
    """
    denied = Counter(op for error in errors if (op := denied_operation(error)) is not None)
    for operation, times in sorted(denied.items()):
        logger.error(
            "AWS denied an operation: the function's role lacks the permission (template parameters, "
            "a permissions boundary or an SCP)",
            extra={"operation": operation, "times": times},
        )
        count_with_reason(MetricName.ACCESS_DENIED, operation, times)
        count(MetricName.ACCESS_DENIED, times)  # the total, which the AccessDenied alarm watches


def report_deregistrations(records: Sequence[Deregistration]) -> None:
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
            logger.info(REMOVED_MESSAGE, extra=fields)
        elif record.outcome is Outcome.DRY_RUN:
            dry_run[record.reason.value] += 1
            logger.info(DRY_RUN_REMOVED_MESSAGE, extra=fields)
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
        report_denied(r.error for r in records if r.error is not None)
