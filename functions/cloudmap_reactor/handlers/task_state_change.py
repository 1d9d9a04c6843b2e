"""Reactor: an ECS task of a service is stopping, so take it out of Cloud Map right away.

Invalid events are logged, counted in ``InvalidEvents`` and dropped (retrying cannot fix them).
AWS failures are raised after botocore's retries, so Lambda retries the event and finally parks
it in the dead-letter queue.
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.utilities.parser import ValidationError, parse
from aws_lambda_powertools.utilities.typing import LambdaContext

from cloudmap_reactor import wiring
from cloudmap_reactor.core.reactor import StoppingTask, handle_stopping_task
from cloudmap_reactor.events import TaskStateChangeEvent
from cloudmap_reactor.handlers.reporting import report_deregistrations
from cloudmap_reactor.observability import MetricName, count, logger, metrics, tracer

STOPPED = "STOPPED"


class DeregistrationFailed(RuntimeError):
    """Raised so that the event is retried and, failing that, lands in the dead-letter queue."""


@metrics.log_metrics
@logger.inject_lambda_context(correlation_id_path=correlation_paths.EVENT_BRIDGE, clear_state=True)
@tracer.capture_lambda_handler(capture_response=False)
def lambda_handler(event: Any, context: LambdaContext) -> dict[str, Any]:
    deps = wiring.reactor_deps()
    try:
        parsed = parse(event=event, model=TaskStateChangeEvent)
    except (ValidationError, ValueError, TypeError) as exc:
        logger.warning("Dropping invalid event", extra={"validation_error": _summary(exc)})
        count(MetricName.INVALID_EVENTS)
        return {"status": "invalid"}

    detail = parsed.detail
    logger.append_keys(cluster_arn=detail.cluster_arn, task_arn=detail.task_arn, ecs_service=detail.service_name)
    service_name = detail.service_name
    if detail.desired_status != STOPPED or service_name is None:
        logger.info("Ignoring event: not a stopping task of a service", extra={"group": detail.group})
        return {"status": "ignored"}
    if not deps.settings.in_scope(detail.cluster_arn):
        logger.info("Ignoring event: cluster not in CLUSTER_ARNS")
        return {"status": "ignored"}

    result = handle_stopping_task(
        StoppingTask(cluster_arn=detail.cluster_arn, task_arn=detail.task_arn, service_name=service_name),
        services=deps.services,
        remover=deps.remover,
        dry_run=deps.settings.dry_run,
    )
    report_deregistrations(result.deregistrations)
    if not result.uses_cloudmap:
        logger.info(
            "Nothing to do: service not found or not registered in Cloud Map",
            extra={"service_found": result.service_found},
        )
    if result.failed:
        raise DeregistrationFailed(f"{len(result.failed)} deregistration(s) failed for {detail.task_arn}")
    return {
        "status": "processed",
        "outcomes": {d.cloudmap_service_id: d.outcome.value for d in result.deregistrations},
    }


def _message(error: Any) -> str:
    if error["type"] == "string_pattern_mismatch":
        return f"not in the expected format: {str(error['input'])[:200]!r}"
    return str(error["msg"])


def _summary(exc: Exception) -> str:
    """A bounded description of why validation failed (never the whole, possibly huge, input)."""
    if isinstance(exc, ValidationError):
        parts = [f"{'.'.join(str(p) for p in err['loc'])}: {_message(err)}" for err in exc.errors()[:5]]
        return "; ".join(parts)[:1000]
    return str(exc)[:1000]
