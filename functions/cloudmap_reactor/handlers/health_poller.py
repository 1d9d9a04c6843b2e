"""Health poller: on a schedule, take UNHEALTHY running tasks out of Cloud Map.

ECS starts a replacement before it stops an unhealthy task, so without this an unhealthy task can
keep receiving Service Connect traffic for minutes. One invocation runs a pass every
``POLL_INTERVAL_SECONDS`` until shortly before the next scheduled one. Metrics are flushed after
each pass, so the ``HealthScanCompleted`` heartbeat is as fresh as the last complete pass. A pass
that could not read every cluster still finishes the others; the invocation then fails (Lambda
``Errors`` alarm) and that pass emits no heartbeat.
"""

from __future__ import annotations

import os
import time
from typing import Any

from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from cloudmap_reactor import wiring
from cloudmap_reactor.adapters import deadline as aws_clock
from cloudmap_reactor.core.http_checks import ProblemKind
from cloudmap_reactor.core.poll_loop import DEADLINE_MARGIN_SECONDS, PollLoop, poll_window_seconds
from cloudmap_reactor.core.ports import AwsCallFailed
from cloudmap_reactor.core.probing import ProbeVerdict
from cloudmap_reactor.handlers.reporting import (
    guard_fields,
    log_decision,
    report_denied,
    report_deregistrations,
    report_disabled,
    report_ledger,
)
from cloudmap_reactor.observability import (
    MetricName,
    count,
    count_with_reason,
    flush_metrics,
    logger,
    metrics,
    publish_metrics,
    tracer,
)
from cloudmap_reactor.poller.reading import MISSING_CLUSTER, ClusterSkipped
from cloudmap_reactor.poller.scanner import HealthPassResult, HealthScanner

wiring.policy()  # a bad environment stops the function here, at its cold start, naming the variable


NO_CLUSTER = "(no cluster in scope)"  # the key of the once-per-container report of an empty cluster list


class HealthScanIncomplete(RuntimeError):
    """Some clusters could not be read; the rest of each pass was still done."""


@publish_metrics
@logger.inject_lambda_context(correlation_id_path=correlation_paths.EVENT_BRIDGE, clear_state=True)
@tracer.capture_lambda_handler(capture_response=False)
def lambda_handler(event: Any, context: LambdaContext) -> dict[str, Any]:
    if not wiring.policy().enabled:  # the emergency stop: no lease, no read, no write
        return report_disabled()
    deps = wiring.poller_deps()
    policy = deps.policy
    remaining = context.get_remaining_time_in_millis() / 1000
    # No AWS call of any pass may run into the time kept free at the end of the invocation.
    deadline = aws_clock.now() + max(0.0, remaining - DEADLINE_MARGIN_SECONDS)
    with aws_clock.aws_deadline(deadline):  # a cold start reads the probe streaks
        scanner = deps.new_scanner(owner=context.aws_request_id)
    window = poll_window_seconds(policy.poll_window_seconds, policy.poll_schedule_seconds, remaining)
    failures: list[ClusterSkipped] = []
    totals = {"tasks_examined": 0, "unhealthy_found": 0, "deregistrations": 0}

    def one_pass() -> None:
        started = time.perf_counter()
        result = scanner.run_pass(deadline=deadline)
        _report_missing_clusters(result, deps.missing_reported)
        _report_pass(result, duration_ms=(time.perf_counter() - started) * 1000, dry_run=policy.dry_run)
        failures.extend(result.unread_clusters)
        totals["tasks_examined"] += result.tasks_examined
        totals["unhealthy_found"] += len(result.unhealthy)
        totals["deregistrations"] += len(result.deregistrations)

    try:
        passes = PollLoop(interval=policy.poll_interval_seconds, window=window).run(one_pass)
    finally:
        with aws_clock.aws_deadline(deadline):
            _close_invocation(deps, scanner)
    summary = {
        "passes": passes,
        "window_seconds": round(window, 1),
        **totals,
        "ecs_budget_wait_seconds": round(deps.ecs_budget.waited_seconds, 2),
    }
    if failures:
        clusters = sorted({f.cluster_arn for f in failures})
        raise HealthScanIncomplete(f"{len(clusters)} cluster(s) could not be scanned: {clusters}; {summary}")
    logger.info("Health polling finished", extra=summary)
    return {"status": "completed", **summary}


def _close_invocation(deps: wiring.PollerDeps, scanner: HealthScanner) -> None:
    """Release the lease (the next invocation acts at once) and keep the probe streaks for the next container."""
    try:
        scanner.release_lease()
        deps.save_history()
    except AwsCallFailed as exc:  # the lease expires by itself; the streaks start again from the last save
        logger.warning("Could not release the lease or save the probe streaks", extra={"error": str(exc)})


def _report_pass(result: HealthPassResult, *, duration_ms: float, dry_run: bool) -> None:
    """Log and publish one pass at once, so the heartbeat is not held until the invocation ends."""
    if result.lease_elsewhere:
        logger.info("Another poller invocation holds the lease: this pass does nothing")
        flush_metrics()
        return
    log_decision(result.decision)
    report_ledger(result)
    for record in result.decision.invalid_records:
        logger.warning(
            "Ledger record ignored: it names a Cloud Map service or task not its service's (never acted on)",
            extra={"cloudmap_service_id": record.cloudmap_service_id, "instance_id": record.instance_id},
        )
    for found in result.unhealthy:
        logger.warning(
            "Task is UNHEALTHY while RUNNING",
            extra={
                "cluster_arn": found.task.cluster_arn,
                "ecs_service": found.service.service_name,
                "task_arn": found.task.task_arn,
            },
        )
    _report_probes(result)
    report_deregistrations(result.deregistrations)
    for held in result.fail_open:
        logger.warning(
            "Fail-open: unhealthy tasks left registered, too few would stay healthy", extra=guard_fields(held)
        )
    for orphan in result.orphans:
        logger.warning(
            "Cloud Map instance matches no task ECS knows (counted, not removed)",
            extra={
                "cluster_arn": orphan.cluster_arn,
                "ecs_service": orphan.service_name,
                "cloudmap_service_id": orphan.cloudmap_service_id,
                "instance_id": orphan.instance_id,
            },
        )
    for stale in result.stale_clients:
        logger.warning(
            "Client tasks started before endpoints they depend on existed: they cannot resolve them",
            extra={
                "cluster_arn": stale.service.cluster_arn,
                "ecs_service": stale.service.service_name,
                "stale_tasks": len(stale.stale_tasks),
                "endpoints": {name: created.isoformat() for name, created in stale.newer_endpoints},
                "oldest_task_started_at": min(t.started_at for t in stale.stale_tasks if t.started_at).isoformat(),
            },
        )
    for redeployment in (r for r in result.redeployments if r.error is None):
        logger.warning(
            ("DRY_RUN: would force a new deployment of" if redeployment.dry_run else "Forced a new deployment of")
            + " a stale client",
            extra={
                "cluster_arn": redeployment.client.service.cluster_arn,
                "ecs_service": redeployment.client.service.service_name,
            },
        )
    for skipped in result.read_failures:
        logger.error(
            "Could not reconcile or check start order; the rest of the pass went on",
            extra={"cluster_arn": skipped.cluster_arn, "ecs_service": skipped.service_name, "error": skipped.error},
        )
    for failure in result.unread_clusters:
        logger.error(
            "Could not scan cluster",
            extra={"cluster_arn": failure.cluster_arn, "reason": failure.reason, "error": failure.error},
        )
        count_with_reason(MetricName.CLUSTER_SKIPPED, failure.reason)
    report_denied([f.error for f in result.read_failures] + [f.error for f in result.unread_clusters])
    count(MetricName.UNHEALTHY_TASKS_FOUND, len(result.unhealthy))
    count(MetricName.FAIL_OPEN_ACTIVATED, len(result.fail_open))
    count(MetricName.STALE_DEPENDENCY_TASKS, sum(len(s.stale_tasks) for s in result.stale_clients))
    redeployed = sum(1 for r in result.redeployments if not r.dry_run and r.error is None)
    if redeployed:
        count(MetricName.CLIENTS_REDEPLOYED, redeployed)
    if result.reconciled_services:
        count(MetricName.ORPHAN_INSTANCES, len(result.orphans))
    metrics.add_metric(name=MetricName.HEALTH_SCAN_DURATION.value, unit=MetricUnit.Milliseconds, value=duration_ms)
    if result.complete:
        count(MetricName.HEALTH_SCAN_COMPLETED)
    logger.info(
        "Health scan pass completed" if result.complete else "Health scan pass incomplete",
        extra={
            "clusters_scanned": result.clusters_scanned,
            "services_with_cloudmap": result.services_with_cloudmap,
            "services_described": result.services_described,
            "tasks_examined": result.tasks_examined,
            "reconciled_services": result.reconciled_services,
            "unhealthy_found": len(result.unhealthy),
            "fail_open_services": len(result.fail_open),
            "orphan_instances": len(result.orphans),
            "deregistrations": len(result.deregistrations),
            "probes": len(result.probes),
            "failed_probes": len(result.failed_probes),
            "skipped_probes": sum(1 for p in result.probes if p.verdict is ProbeVerdict.SKIPPED),
            "dry_run": dry_run,
            "duration_ms": round(duration_ms, 1),
        },
    )
    flush_metrics()


def _report_missing_clusters(result: HealthPassResult, reported: set[str]) -> None:
    """A cluster ECS does not know: a configuration error, logged and counted once per container, then skipped.

    It neither fails the invocation nor withholds the heartbeat (the pass read every cluster that
    exists), so a cluster deleted while still named in ClusterArns does not page for ever.
    """
    if result.no_cluster_in_scope and NO_CLUSTER not in reported:
        reported.add(NO_CLUSTER)
        logger.error(
            "Configuration error: no cluster to look after (ClusterTag matches no cluster, or this region "
            "has none); nothing is watched and the heartbeat is withheld. Reported once per container",
            extra={"cluster_tag": wiring.policy().cluster_tag, "region": os.environ.get("AWS_REGION", "")},
        )
        count(MetricName.CLUSTER_MISSING)
    for missing in result.skipped_clusters:
        if missing.reason != MISSING_CLUSTER:
            continue
        if missing.cluster_arn in reported:
            logger.debug("Skipped a missing cluster", extra={"cluster_arn": missing.cluster_arn})
            continue
        reported.add(missing.cluster_arn)
        logger.error(
            "Configuration error: ECS has no such cluster (deleted, or a wrong ARN in ClusterArns); it is "
            "skipped, and reported once per container",
            extra={"cluster_arn": missing.cluster_arn, "error": missing.error},
        )
        count(MetricName.CLUSTER_MISSING)


def _report_probes(result: HealthPassResult) -> None:
    """Failed probes (with how many in a row), services or instances that cannot be probed, and the metrics."""
    for failed in result.failed_probes:
        probe = failed.result
        logger.warning(
            "HTTP probe failed",
            extra={
                "cluster_arn": failed.service.cluster_arn,
                "ecs_service": failed.service.service_name,
                "cloudmap_service_id": probe.target.cloudmap_service_id,
                "instance_id": probe.target.instance_id,
                "url": probe.target.url,
                "error": probe.error,
                "status": probe.status,
                "consecutive_failures": failed.consecutive_failures,
            },
        )
    for problem in result.probe_problems:  # each reported once per invocation (per instance for targets)
        logger.warning(
            "Cannot probe: nothing is deregistered on its account",
            extra={
                "cluster_arn": problem.cluster_arn,
                "ecs_service": problem.service_name,
                "cloudmap_service_id": problem.cloudmap_service_id,
                "instance_id": problem.instance_id,
                "kind": problem.kind.value,
                "error": problem.error,
            },
        )
    invalid_targets = sum(1 for p in result.probe_problems if p.kind is ProblemKind.INVALID_TARGET)
    if invalid_targets:
        count(MetricName.INVALID_PROBE_TARGETS, invalid_targets)
    if not result.probes:
        return
    count(MetricName.PROBE_FAILURES, len(result.failed_probes))
    for probe in result.probes:
        if probe.verdict is not ProbeVerdict.SKIPPED:
            metrics.add_metric(
                name=MetricName.PROBE_DURATION.value, unit=MetricUnit.Milliseconds, value=probe.duration_ms
            )
