"""Reactor: an ECS task of a service is stopping, so take it out of Cloud Map right away.

Invalid events are logged, counted in ``InvalidEvents`` and dropped (retrying cannot fix them).
AWS failures are raised after botocore's retries, so Lambda retries the event and finally parks
it in the dead-letter queue. The AWS work runs under a deadline ``DEADLINE_MARGIN_SECONDS``
before the function's timeout: retries that would run past it give up instead, so a failure is
always counted in ``DeregistrationErrors`` and raised, never cut short by Lambda's timeout.
"""

from __future__ import annotations

import time
from typing import Any

from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.utilities.typing import LambdaContext

from cloudmap_reactor import wiring
from cloudmap_reactor.adapters import deadline
from cloudmap_reactor.core.decide import (
    decide_started_task,
    decide_stop_event,
    held_until_healthy,
    started_event_precheck,
    stop_event_precheck,
)
from cloudmap_reactor.core.decisions import Hold
from cloudmap_reactor.core.model import RUNNING
from cloudmap_reactor.core.ports import AwsCallFailed
from cloudmap_reactor.events import InvalidEvent, TaskStateChange, parse_task_state_change
from cloudmap_reactor.handlers.reporting import (
    log_decision,
    report_denied,
    report_deregistrations,
    report_disabled,
    report_ledger_changes,
)
from cloudmap_reactor.observability import MetricName, count, logger, publish_metrics, traced_phase, tracer
from cloudmap_reactor.poller.reading import read_service

# Kept free at the end of the invocation (of the 30 s timeout): for botocore's connect timeout
# (3 s, not shortened by the deadline), the logs and the metrics.
DEADLINE_MARGIN_SECONDS = 5.0

wiring.policy()  # a bad environment stops the function here, at its cold start, naming the variable


def _started(task: TaskStateChange, deps: wiring.ReactorDeps, context: LambdaContext) -> dict[str, Any]:
    """Hold a starting task out of Cloud Map until ECS reports it HEALTHY, within seconds (the poller would too)."""
    held = started_event_precheck(
        cluster_arn=task.cluster_arn, group=task.group, last_status=task.last_status, policy=deps.policy
    )
    if held is not None or deps.ledger is None:
        why = held.why.value if held else "no-ledger"
        logger.info("Ignoring a started task", extra={"hold": why, "group": task.group})
        return {"status": "ignored"}
    at = deadline.now() + context.get_remaining_time_in_millis() / 1000 - DEADLINE_MARGIN_SECONDS
    with deadline.aws_deadline(at):
        try:
            if _outside_tagged_clusters(task, deps):
                return {"status": "ignored"}
            service = deps.services.get(task.cluster_arn, task.service_name or "")
            if service is None or not held_until_healthy(service, deps.policy):
                logger.info("Ignoring a started task: its service is not held until healthy")
                return {"status": "ignored"}
            snapshot = read_service(deps.fleet, deps.registry, deps.ledger, service)
        except AwsCallFailed as exc:  # retried by Lambda, then the DLQ; the poller gets to it anyway
            logger.error("Could not read the started task's service", extra={"error": str(exc)})
            report_denied([str(exc)])
            raise DeregistrationFailed(f"readiness of {task.task_arn}: {exc}") from exc
        decision = decide_started_task(snapshot, task.task_arn, deps.policy)
        log_decision(decision)
        acted = deps.actor.apply(decision)
    report_deregistrations(acted.deregistrations)
    report_ledger_changes(acted.ledger, now=time.time())
    for verdict in decision.fail_open:
        logger.warning(
            "Fail-open: the started task stays registered", extra={"cloudmap_service_id": verdict.cloudmap_service_id}
        )
    if acted.failed:
        raise DeregistrationFailed(f"{len(acted.failed)} deregistration(s) failed for {task.task_arn}")
    return {
        "status": "processed",
        "outcomes": {d.cloudmap_service_id: d.outcome.value for d in acted.deregistrations},
        "restored": sum(1 for c in acted.ledger if c.error is None and not c.dry_run),
    }


def _outside_tagged_clusters(task: TaskStateChange, deps: wiring.ReactorDeps) -> bool:
    """ClusterTag: an event of a cluster without the tag is not ours (an EventBridge rule cannot match cluster tags)."""
    if deps.clusters is None or deps.clusters.carries(task.cluster_arn):
        return False
    logger.info("Ignoring event: its cluster does not carry CLUSTER_TAG", extra={"hold": "cluster-out-of-scope"})
    return True


class DeregistrationFailed(RuntimeError):
    """Raised so that the event is retried and, failing that, lands in the dead-letter queue."""


@publish_metrics
@logger.inject_lambda_context(correlation_id_path=correlation_paths.EVENT_BRIDGE, clear_state=True)
@tracer.capture_lambda_handler(capture_response=False)
def lambda_handler(event: Any, context: LambdaContext) -> dict[str, Any]:
    if not wiring.policy().enabled:  # the emergency stop: returns (never raises), so the DLQ stays empty
        return report_disabled()
    deps = wiring.reactor_deps()
    _, _, _, region, account, *_ = context.invoked_function_arn.split(":")
    try:
        task = parse_task_state_change(event, own_account=account, own_region=region)
    except InvalidEvent as exc:
        logger.warning("Dropping invalid event", extra={"validation_error": str(exc)})
        count(MetricName.INVALID_EVENTS)
        return {"status": "invalid"}

    logger.append_keys(cluster_arn=task.cluster_arn, task_arn=task.task_arn, ecs_service=task.service_name)
    if task.desired_status == RUNNING:  # ReadinessEvents: a task of a service has started
        return _started(task, deps, context)
    return _stopping(task, deps, context)


def _stopping(task: TaskStateChange, deps: wiring.ReactorDeps, context: LambdaContext) -> dict[str, Any]:
    """ECS decided to stop the task: its instances leave Cloud Map now."""
    held = stop_event_precheck(
        cluster_arn=task.cluster_arn, group=task.group, desired_status=task.desired_status, policy=deps.policy
    )
    if held is not None:
        logger.info("Ignoring event", extra={"hold": held.why.value, "detail": held.detail, "group": task.group})
        return {"status": "ignored"}

    at = deadline.now() + context.get_remaining_time_in_millis() / 1000 - DEADLINE_MARGIN_SECONDS
    with deadline.aws_deadline(at):
        try:
            with traced_phase("read"):
                if _outside_tagged_clusters(task, deps):
                    return {"status": "ignored"}
                service = deps.services.get(task.cluster_arn, task.service_name or "")
        except AwsCallFailed as exc:  # the ECS service lookup: no deregistration was tried
            logger.error("Could not look up the task's ECS service; nothing deregistered", extra={"error": str(exc)})
            count(MetricName.DEREGISTRATION_ERRORS)
            report_denied([str(exc)])
            raise DeregistrationFailed(f"ECS service lookup failed for {task.task_arn}: {exc}") from exc
        decision = decide_stop_event(task_arn=task.task_arn, service=service, policy=deps.policy)
        log_decision(decision)
        with traced_phase("act") as annotate:
            acted = deps.actor.apply(decision)
            annotate("deregistrations", len(acted.deregistrations))
    report_deregistrations(acted.deregistrations)
    for hold in decision.held:
        if hold.why is Hold.TAGS_OUT_OF_SCOPE:
            logger.info("Ignoring event: the service's tags exclude it (cloudmap-reactor:ignore / :enabled)")
            return {"status": "ignored"}
        if hold.why is not Hold.DRY_RUN:
            logger.info(
                "Nothing to do: service not found or not registered in Cloud Map",
                extra={"hold": hold.why.value, "service_found": service is not None},
            )
    if acted.failed:
        raise DeregistrationFailed(f"{len(acted.failed)} deregistration(s) failed for {task.task_arn}")
    return {
        "status": "processed",
        "outcomes": {d.cloudmap_service_id: d.outcome.value for d in acted.deregistrations},
    }
