"""`cloudmap-reactor status`: one screen on a deployed stack, for whoever is on call.

A handful of read-only calls, each part on its own (one that fails says so; the others still
show): the stack's version, status and switches (``DescribeStacks``); the quarantined instances
(the ledger: one ``Query``); the dead-letter queue's depth (``GetQueueAttributes``); the stack's
alarms and which are in ALARM (``ListStackResources``, ``DescribeAlarms``); and when the poller
last completed a health scan (``GetMetricStatistics`` on the heartbeat alarm's own metric).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from cloudmap_reactor.context import stack_outputs, stack_parameters
from cloudmap_reactor.core.ports import QuarantineLedger
from cloudmap_reactor.review import quarantine_entries

SWITCHES = ("Enabled", "DryRun")  # the parameters an operator flips (Enabled: when the template has it)
HEARTBEAT_METRIC = "HealthScanCompleted"
HEARTBEAT_LOOKBACK = timedelta(minutes=30)
ALARM_TYPE = "AWS::CloudWatch::Alarm"
QUEUE_OUTPUT = "DeadLetterQueueUrl"
SHOWN_QUARANTINED = 10


@dataclass(slots=True)
class Status:
    """What ``status`` found; every part is None when it could not be read (``problems`` says why)."""

    switches: dict[str, str] = field(default_factory=dict)
    quarantined: list[dict[str, Any]] | None = None
    dead_letters: int | None = None
    alarms: dict[str, str] | None = None  # alarm name -> state
    alarm_reasons: dict[str, str] = field(default_factory=dict)  # of those in ALARM
    last_heartbeat: str | None = None  # ISO time of the last minute with a completed scan
    heartbeat_known: bool = False  # the stack has an alarm on the heartbeat metric (so it was looked up)
    problems: list[str] = field(default_factory=list)

    @property
    def in_alarm(self) -> list[str]:
        return sorted(name for name, state in (self.alarms or {}).items() if state == "ALARM")

    @property
    def needs_attention(self) -> bool:
        return bool(self.problems or self.in_alarm or self.dead_letters or self.switches.get("Enabled") == "false")

    def as_json(self) -> dict[str, Any]:
        return {
            "needs_attention": self.needs_attention,
            "parameters": self.switches,
            "quarantined": self.quarantined,
            "dead_letter_messages": self.dead_letters,
            "alarms": self.alarms,
            "alarms_in_alarm": [{"name": n, "reason": self.alarm_reasons.get(n, "")} for n in self.in_alarm],
            "heartbeat_watched": self.heartbeat_known,  # false: no alarm on the heartbeat, not looked up
            "last_heartbeat": self.last_heartbeat,
            "problems": self.problems,
        }

    def lines(self) -> list[str]:
        switches = ", ".join(f"{k}={v}" for k, v in self.switches.items()) or "-"
        lines = [f"switches     {switches}"]
        if self.quarantined is not None:
            lines.append(f"quarantined  {len(self.quarantined)} instance(s)")
            lines += [
                f"  {q['service']}: {q['instance_id']} in {q['cloudmap_service_id']} "
                f"({q['reason']}, for {q['quarantined_seconds']} s)"
                for q in self.quarantined[:SHOWN_QUARANTINED]
            ]
            if len(self.quarantined) > SHOWN_QUARANTINED:
                lines.append(f"  … and {len(self.quarantined) - SHOWN_QUARANTINED} more (--json lists them all)")
        if self.dead_letters is not None:
            hint = " (cloudmap-reactor redrive replays them)" if self.dead_letters else ""
            lines.append(f"dead letters {self.dead_letters}{hint}")
        if self.alarms is not None:
            lines.append(f"alarms       {len(self.in_alarm)} of {len(self.alarms)} in ALARM")
            lines += [f"  ALARM {name}: {self.alarm_reasons.get(name, '')}" for name in self.in_alarm]
        if self.heartbeat_known:
            minutes = int(HEARTBEAT_LOOKBACK.total_seconds() // 60)
            lines.append(f"heartbeat    {self.last_heartbeat or f'no completed scan in the last {minutes} minutes'}")
        elif self.alarms is not None:
            lines.append(f"heartbeat    unknown: no alarm of the stack watches {HEARTBEAT_METRIC}")
        lines += [f"could not read {problem}" for problem in self.problems]
        return lines


def gather(
    stack: Mapping[str, Any],
    *,
    cloudformation: Any,
    cloudwatch: Any,
    sqs: Any,
    ledger: QuarantineLedger | None,
    errors: tuple[type[BaseException], ...],
    clock: Callable[[], float] = time.time,
) -> Status:
    """Each part read on its own; ``errors`` are those a part may fail with (the rest propagate)."""
    status = Status()
    parameters = stack_parameters(stack)
    status.switches = {name: parameters[name] for name in SWITCHES if name in parameters}
    now = clock()

    def part(name: str, read: Callable[[], None]) -> None:
        try:
            read()
        except errors as exc:
            status.problems.append(f"{name}: {exc}")

    if ledger is not None:
        part("the quarantine ledger", lambda: _quarantined(status, ledger, now))
    queue = stack_outputs(stack).get(QUEUE_OUTPUT)
    if queue:
        part("the dead-letter queue", lambda: _dead_letters(status, sqs, queue))
    part("the alarms", lambda: _alarms(status, cloudformation, cloudwatch, stack["StackName"], now))
    return status


def _quarantined(status: Status, ledger: QuarantineLedger, now: float) -> None:
    records, unreadable = ledger.quarantined()
    status.quarantined = quarantine_entries(records, now)
    if unreadable:  # never acted on by the poller: someone wrote them by hand, or they are damaged
        status.problems.append(f"the quarantine ledger: {unreadable} item(s) are not quarantine records")


def _dead_letters(status: Status, sqs: Any, queue_url: str) -> None:
    names = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
    attributes = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=names)["Attributes"]
    status.dead_letters = sum(int(attributes.get(name, 0)) for name in names)


def _alarms(status: Status, cloudformation: Any, cloudwatch: Any, stack_name: str, now: float) -> None:
    pages = cloudformation.get_paginator("list_stack_resources").paginate(StackName=stack_name)
    names = [
        r["PhysicalResourceId"]
        for page in pages
        for r in page.get("StackResourceSummaries", [])
        if r.get("ResourceType") == ALARM_TYPE and r.get("PhysicalResourceId")
    ]
    alarms = [
        alarm
        for start in range(0, len(names), 100)  # DescribeAlarms takes at most 100 names
        for alarm in cloudwatch.describe_alarms(AlarmNames=names[start : start + 100]).get("MetricAlarms", [])
    ]
    status.alarms = {a["AlarmName"]: a["StateValue"] for a in alarms}
    status.alarm_reasons = {a["AlarmName"]: a.get("StateReason", "") for a in alarms if a["StateValue"] == "ALARM"}
    metric = next((m for a in alarms for m in _metrics(a) if m.get("MetricName") == HEARTBEAT_METRIC), None)
    status.heartbeat_known = metric is not None
    if metric is not None:
        status.last_heartbeat = _last_heartbeat(cloudwatch, metric, now)


def _metrics(alarm: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The metrics an alarm watches: its own, or those of its metric-math query."""
    if alarm.get("MetricName"):
        return [alarm]
    return [q["MetricStat"]["Metric"] for q in alarm.get("Metrics", []) if "MetricStat" in q]


def _last_heartbeat(cloudwatch: Any, metric: Mapping[str, Any], now: float) -> str | None:
    """The last minute of the lookback in which a scan completed, on the heartbeat alarm's metric and dimensions."""
    end = datetime.fromtimestamp(now, UTC) + timedelta(minutes=1)  # the current minute, whole
    points = cloudwatch.get_metric_statistics(
        Namespace=metric["Namespace"],
        MetricName=metric["MetricName"],
        Dimensions=metric.get("Dimensions", []),
        StartTime=end - HEARTBEAT_LOOKBACK,
        EndTime=end,
        Period=60,
        Statistics=["Sum"],
    ).get("Datapoints", [])
    seen = [p["Timestamp"] for p in points if p.get("Sum", 0) >= 1]
    return max(seen).astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z") if seen else None
