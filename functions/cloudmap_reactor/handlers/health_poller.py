"""Health poller: on a schedule, take UNHEALTHY running tasks out of Cloud Map.

ECS starts a replacement before it stops an unhealthy task, so without this an unhealthy task can
keep receiving Service Connect traffic for minutes. A pass that could not read every cluster
still finishes the others, then fails the invocation (Lambda ``Errors`` alarm) and withholds the
``HealthScanCompleted`` heartbeat.
"""

from __future__ import annotations

import time
from typing import Any

from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from cloudmap_reactor import wiring
from cloudmap_reactor.core.health_scan import run_health_pass
from cloudmap_reactor.handlers.reporting import report_deregistrations
from cloudmap_reactor.observability import MetricName, count, logger, metrics, tracer


class HealthScanIncomplete(RuntimeError):
    """Some clusters could not be read; the rest of the pass was still done."""


@metrics.log_metrics
@logger.inject_lambda_context(correlation_id_path=correlation_paths.EVENT_BRIDGE, clear_state=True)
@tracer.capture_lambda_handler(capture_response=False)
def lambda_handler(event: Any, context: LambdaContext) -> dict[str, Any]:
    deps = wiring.poller_deps()
    started = time.perf_counter()
    result = run_health_pass(
        deps.settings.cluster_arns,
        fleet=deps.fleet,
        remover=deps.remover,
        dry_run=deps.settings.dry_run,
    )
    duration_ms = (time.perf_counter() - started) * 1000

    for found in result.unhealthy:
        logger.warning(
            "Task is UNHEALTHY while RUNNING",
            extra={
                "cluster_arn": found.task.cluster_arn,
                "ecs_service": found.service.service_name,
                "task_arn": found.task.task_arn,
            },
        )
    report_deregistrations(result.deregistrations)
    count(MetricName.UNHEALTHY_TASKS_FOUND, len(result.unhealthy))
    metrics.add_metric(name=MetricName.HEALTH_SCAN_DURATION.value, unit=MetricUnit.Milliseconds, value=duration_ms)
    summary = {
        "clusters_scanned": result.clusters_scanned,
        "services_with_cloudmap": result.services_with_cloudmap,
        "tasks_examined": result.tasks_examined,
        "unhealthy_found": len(result.unhealthy),
        "deregistrations": len(result.deregistrations),
        "dry_run": deps.settings.dry_run,
        "duration_ms": round(duration_ms, 1),
    }
    if not result.complete:
        for failure in result.cluster_failures:
            logger.error("Could not scan cluster", extra={"cluster_arn": failure.cluster_arn, "error": failure.error})
        raise HealthScanIncomplete(f"{len(result.cluster_failures)} cluster(s) could not be scanned: {summary}")
    count(MetricName.HEALTH_SCAN_COMPLETED)
    logger.info("Health scan completed", extra=summary)
    return {"status": "completed", **summary}
