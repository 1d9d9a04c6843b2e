"""The one Logger, Tracer and Metrics of the application, and the metric names operators alarm on.

Powertools reads ``POWERTOOLS_SERVICE_NAME``, ``POWERTOOLS_METRICS_NAMESPACE`` and the other
``POWERTOOLS_*`` variables itself. The service name is the ``service`` dimension of every metric
and key of every log line; the template sets it to the stack's name, so two stacks' alarms never
mix. Metric names and the ``Reason`` dimension are a public interface: alarms and dashboards
depend on them, so they live here and nowhere else.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from enum import StrEnum
from typing import Any, TypeVar

from aws_lambda_powertools import Logger, Metrics, Tracer, single_metric
from aws_lambda_powertools.metrics import MetricUnit

from cloudmap_reactor import __version__
from cloudmap_reactor.config import log_level_setting, valid_log_level

SERVICE_NAME = os.environ.get("POWERTOOLS_SERVICE_NAME") or "cloudmap-reactor"

# An explicit level, so that a bad LOG_LEVEL cannot crash this import inside Powertools: the
# policy (wiring.policy, at the cold start) rejects it with a message naming the variable.
# The version is a key of every log line (inject_lambda_context's clear_state keeps it).
logger = Logger(
    service=SERVICE_NAME, level=valid_log_level(log_level_setting(os.environ)[1]) or "INFO", version=__version__
)
# Nothing is patched: most AWS calls and probes run on worker threads, where X-Ray would attach
# them to no phase. Each phase is an explicit subsegment of the handler's segment instead
# (``traced_phase``), annotated with what it did.
tracer = Tracer(service=SERVICE_NAME, auto_patch=False)
metrics = Metrics(service=SERVICE_NAME)


class MetricName(StrEnum):
    TASKS_DEREGISTERED = "TasksDeregistered"
    DRY_RUN_DEREGISTRATIONS = "DryRunDeregistrations"
    DEREGISTRATION_ERRORS = "DeregistrationErrors"
    UNHEALTHY_TASKS_FOUND = "UnhealthyTasksFound"
    INVALID_EVENTS = "InvalidEvents"
    HEALTH_SCAN_COMPLETED = "HealthScanCompleted"
    HEALTH_SCAN_DURATION = "HealthScanDuration"
    FAIL_OPEN_ACTIVATED = "FailOpenActivated"
    ORPHAN_INSTANCES = "OrphanInstances"
    STALE_DEPENDENCY_TASKS = "StaleDependencyTasks"
    CLIENTS_REDEPLOYED = "ClientsRedeployed"
    PROBE_FAILURES = "ProbeFailures"
    PROBE_DURATION = "ProbeDuration"
    CLUSTER_SKIPPED = "ClusterSkipped"
    INVALID_PROBE_TARGETS = "InvalidProbeTargets"
    TASKS_RESTORED = "TasksRestored"
    QUARANTINED_INSTANCES = "QuarantinedInstances"
    OLDEST_QUARANTINE_SECONDS = "OldestQuarantineSeconds"
    RESTORE_ERRORS = "RestoreErrors"
    TASKS_REPLACED = "TasksReplaced"
    DISABLED = "Disabled"  # an invocation that did nothing: Enabled=false (the emergency stop)
    ACCESS_DENIED = "AccessDenied"  # Reason: the denied operation (the role lacks a permission)
    CLUSTER_MISSING = "ClusterMissing"  # a configured cluster ECS does not know (once per container)


@contextmanager
def traced_phase(name: str) -> Iterator[Callable[[str, int], None]]:
    """An X-Ray subsegment ``## name`` for one phase; yields ``annotate(key, number)``."""
    with tracer.provider.in_subsegment(f"## {name}") as subsegment:

        def annotate(key: str, value: int) -> None:
            if subsegment is not None:  # None when tracing is off or there is no segment
                number: Any = value  # the SDK's stub says numbers.Number, which mypy cannot match
                subsegment.put_annotation(key, number)

        yield annotate


Handler = TypeVar("Handler", bound=Callable[..., Any])


def publish_metrics(handler: Handler) -> Handler:
    """Like Powertools' ``log_metrics``, without its warning when an invocation had nothing to count."""

    @functools.wraps(handler)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return handler(*args, **kwargs)
        finally:
            flush_metrics()

    return wrapper  # type: ignore[return-value]


def flush_metrics() -> None:
    """Publish the metrics added so far; nothing (and no "No application metrics" warning) when there are none."""
    if metrics.metric_set:
        metrics.flush_metrics()


def count(name: MetricName, value: float = 1) -> None:
    """Add to a metric that carries only the ``service`` dimension."""
    metrics.add_metric(name=name.value, unit=MetricUnit.Count, value=value)


def count_with_reason(name: MetricName, reason: str, value: float = 1) -> None:
    """Emit a metric with the low-cardinality ``Reason`` dimension (its own EMF record)."""
    with single_metric(
        name=name.value,
        unit=MetricUnit.Count,
        value=value,
        namespace=metrics.namespace,
        default_dimensions={"service": SERVICE_NAME},
    ) as metric:
        metric.add_dimension(name="Reason", value=reason)
