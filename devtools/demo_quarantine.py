"""The quarantine part of `make demo`: tasks leave Cloud Map for their health and come back when healthy again.

Two services of cluster ``prod`` are the cast (``seed_quarantine_cast``):

* ``payments``: three tasks with an ECS container health check: payments-1 HEALTHY, payments-2
  UNHEALTHY, payments-3 UNKNOWN (no health check: never acted on);
* ``catalog``: four tasks without a container health check, tagged
  ``cloudmap-reactor:http-check=/healthz``; each task is a real HTTP server on 127.0.0.1.
  catalog-3 starts slowly (its /healthz answers 500 at first, 200 once it has started);
  catalog-4 is healthy, then fails for a while (a dependency blip), then recovers.

``run_quarantine_scenario`` then runs three invocations of the real poller handler (each a few
passes, a second apart) and changes the servers and ECS health between them, printing what each
pass did, Cloud Map after each invocation and the ledger's records. It returns what happened, so
that ``tests/test_demo.py`` can check the scenario without running the whole demo.
"""

from __future__ import annotations

import json
import textwrap
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3

from devtools.aws_emulator import FleetBuilder, SeededService
from devtools.demo_capture import Metric, captured, emf_records, record_metrics
from devtools.http_targets import Behaviour, LocalHttpTargets, TargetServer
from devtools.local_lambda import FakeLambdaContext

if TYPE_CHECKING:
    from cloudmap_reactor.core.decisions import QuarantineRecord

Out = Callable[[str], None]
EVENTS = Path(__file__).resolve().parent.parent / "events"
HTTP_CHECK = {"cloudmap-reactor:http-check": "/healthz"}
# Metrics worth a line per pass (the others are printed with --verbose).
SHOWN_METRICS = (
    "TasksDeregistered",
    "TasksRestored",
    "RestoreErrors",
    "QuarantinedInstances",
    "OldestQuarantineSeconds",
    "ProbeFailures",
    "UnhealthyTasksFound",
    "FailOpenActivated",
)
ALWAYS_SHOWN = ("QuarantinedInstances",)  # shown even when 0


@dataclass
class Member:
    """One task of the cast: its label, what it plays, and how it looks now."""

    label: str
    role: str
    arn: str
    service: SeededService
    server: TargetServer | None = None  # its /healthz, for a probed service
    ecs_health: str = "UNKNOWN"  # as last set through the emulator

    @property
    def instance_id(self) -> str:
        return self.arn.rsplit("/", 1)[-1]

    def state(self) -> str:
        """What the task shows right now (health as ECS reports it, or what its /healthz answers)."""
        if self.server is not None:
            answer = {Behaviour.HEALTHY: "200", Behaviour.FAILING: "500"}.get(self.server.behaviour, "?")
            return f"/healthz answers {answer}" + (f" ({self.role})" if self.role else "")
        return f"ECS {self.ecs_health}" + (f" ({self.role})" if self.role else "")


@dataclass
class QuarantineCast:
    members: list[Member]
    services: dict[str, SeededService]  # title -> service, in print order

    def member(self, label: str) -> Member:
        return next(m for m in self.members if m.label == label)

    def label(self, instance_or_task: str) -> str:
        """A cast member's label for an instance id or task ARN; a short id for anything else."""
        instance_id = instance_or_task.rsplit("/", 1)[-1]
        found = next((m.label for m in self.members if m.instance_id == instance_id), None)
        return found or instance_id[:8] + "…"


@dataclass(frozen=True)
class Happened:
    """A removal or a return, as the poller logged it."""

    invocation: int
    pass_number: int
    label: str
    change: str  # "removed" | "restored"
    reason: str


@dataclass
class ScenarioReport:
    happened: list[Happened] = field(default_factory=list)
    deregistered: Counter[str] = field(default_factory=Counter)  # TasksDeregistered by Reason, summed
    restored: Counter[str] = field(default_factory=Counter)  # TasksRestored by Reason, summed
    identical: dict[str, bool] = field(default_factory=dict)  # returned label -> same attributes as before
    ledger_left: int = -1  # quarantine records at the end
    seconds: float = 0.0
    verbose: bool = False  # printed: every log record as JSON, every metric


def seed_quarantine_cast(fleet: FleetBuilder, http: LocalHttpTargets, cluster: str) -> QuarantineCast:
    """payments (ECS health) and catalog (HTTP checks against servers on 127.0.0.1) in ``cluster``."""
    payments = fleet.create_service(cluster, "payments", discovery_names=["payments"])
    catalog = fleet.create_service(cluster, "catalog", discovery_names=["catalog"], tags=HTTP_CHECK)
    members = []
    for n, (arn, health, role) in enumerate(
        zip(
            fleet.start_tasks(payments, 3),
            ("HEALTHY", "UNHEALTHY", "UNKNOWN"),
            ("", "its container health check fails", "no container health check"),
            strict=True,
        ),
        start=1,
    ):
        fleet.set_health(arn, health)
        members.append(Member(f"payments-{n}", role, arn, payments, ecs_health=health))
    behaviours = (Behaviour.HEALTHY, Behaviour.HEALTHY, Behaviour.FAILING, Behaviour.HEALTHY)
    roles = ("", "", "slow starter", "dependency blip")
    servers = [http.add(b) for b in behaviours]
    arns = fleet.start_tasks(catalog, len(servers), addresses=[s.address for s in servers])
    for n, (arn, server, role) in enumerate(zip(arns, servers, roles, strict=True), start=1):
        members.append(Member(f"catalog-{n}", role, arn, catalog, server=server))
    return QuarantineCast(
        members=members,
        services={"payments / payments": payments, "catalog / catalog (http-check=/healthz)": catalog},
    )


def _as_seeded(cast: QuarantineCast, fleet: FleetBuilder) -> list[str]:
    return ["catalog-3 is still starting: its /healthz answers 500", "payments-2 is UNHEALTHY (ECS)"]


def _slow_starter_up_blip_begins(cast: QuarantineCast, fleet: FleetBuilder) -> list[str]:
    _answer(cast.member("catalog-3"), Behaviour.HEALTHY)
    _answer(cast.member("catalog-4"), Behaviour.FAILING)
    return [
        "catalog-3 has started: its /healthz answers 200",
        "catalog-4's /healthz starts failing (500): a dependency blip",
    ]


def _all_recover(cast: QuarantineCast, fleet: FleetBuilder) -> list[str]:
    _answer(cast.member("catalog-4"), Behaviour.HEALTHY)
    sick = cast.member("payments-2")
    fleet.set_health(sick.arn, "HEALTHY")
    sick.ecs_health, sick.role = "HEALTHY", "its container health check passes again"
    return ["catalog-4 recovers: its /healthz answers 200 again", "ECS reports payments-2 HEALTHY again"]


def _answer(member: Member, behaviour: Behaviour) -> None:
    assert member.server is not None  # noqa: S101 - a cast member with a server
    member.server.behaviour = behaviour


STEPS: tuple[Callable[[QuarantineCast, FleetBuilder], list[str]], ...] = (
    _as_seeded,
    _slow_starter_up_blip_begins,
    _all_recover,
)


def run_quarantine_scenario(
    cast: QuarantineCast, fleet: FleetBuilder, *, out: Out = print, verbose: bool = False
) -> ScenarioReport:
    """Three poller invocations through the real handler, with the changes of ``STEPS`` before each."""
    # Imported only now, as Lambda would: Powertools reads its environment when the handlers load.
    from cloudmap_reactor import wiring  # noqa: PLC0415
    from cloudmap_reactor.handlers import health_poller  # noqa: PLC0415

    policy = wiring.policy()
    started = time.monotonic()
    report = ScenarioReport(verbose=verbose)
    before = {label: attrs for label, attrs in _attributes(cast, fleet).items() if attrs is not None}
    passes = f"{policy.poll_window_seconds or 0:g} s window, a pass every {policy.poll_interval_seconds:g} s"
    intro = (
        f"The poller with the quarantine ledger (DynamoDB table {policy.ledger_table}): {len(STEPS)} invocations "
        f"({passes}; 10 s in AWS), HTTP probes on, the demo changing servers and ECS health between them. A task "
        "taken out for its health while it runs is recorded in the ledger first; it returns with the recorded "
        f"attributes once ECS reports it HEALTHY, or after {policy.probe_healthy_threshold} successful probes in "
        f"a row. ProbeFailed takes {policy.probe_failure_threshold} failed probes in a row of a task that has "
        "passed before; a task that never passed leaves at its first failure (NotReady). QuarantinedInstances "
        "and OldestQuarantineSeconds are read at each pass's start."
    )
    out(textwrap.fill(intro, width=110) + "\n")
    for number, step in enumerate(STEPS, start=1):
        out(f"▶ poller invocation {number} of {len(STEPS)} (events/scheduled-poll.json)")
        for change in step(cast, fleet):
            out(f"  · {change}")
        event = json.loads((EVENTS / "scheduled-poll.json").read_text())
        context = FakeLambdaContext(function_name="health_poller", aws_request_id=f"demo-invocation-{number}")
        with captured() as (logs, stdout):
            result = health_poller.lambda_handler(event, context)
        wanted = ("status", "passes", "unhealthy_found", "deregistrations")
        out(f"  result: {json.dumps({k: v for k, v in result.items() if k in wanted})}")
        restored_now = _print_passes(number, logs, stdout.getvalue(), cast=cast, report=report, out=out)
        records = _ledger(policy.ledger_table)
        _print_view(
            f"Cloud Map after invocation {number}", cast, fleet, records=records, restored_now=restored_now, out=out
        )
        _print_ledger(policy.ledger_table, records, cast, out)
    after = _attributes(cast, fleet)
    returned = sorted({h.label for h in report.happened if h.change == "restored"})
    report.identical = {label: after[label] == before.get(label) for label in returned}
    report.ledger_left = len(_ledger(policy.ledger_table))
    report.seconds = time.monotonic() - started
    _print_summary(report, out)
    return report


def _print_passes(
    invocation: int, logs: list[dict[str, Any]], printed: str, *, cast: QuarantineCast, report: ScenarioReport, out: Out
) -> set[str]:
    """Each pass's log lines and metrics (the handler publishes both per pass); the labels that came back."""
    restored: set[str] = set()
    for number, (records, emfs) in enumerate(_by_pass(logs, printed), start=1):
        if not records and not emfs:
            continue
        out(f"  pass {number}")
        for record in records:
            label = cast.label(str(record.get("instance_id") or record.get("task_arn") or ""))
            message = str(record["message"])
            change = {"Deregistered task from Cloud Map": "removed"}.get(message)
            if message.startswith("Registered a recovered task again"):
                change = "restored"
                restored.add(label)
            if change:
                report.happened.append(Happened(invocation, number, label, change, str(record["reason"])))
            out(f"    log {record['level']:<7} {message} ({_fields(label, record)})")
            if report.verbose:
                out("      " + json.dumps(record))
        shown = [_metric_text(metric, report) for emf in emfs for metric in record_metrics(emf)]
        if any(shown):
            out("    metrics: " + ", ".join(text for text in shown if text))
    return restored


def _by_pass(logs: list[dict[str, Any]], printed: str) -> list[tuple[list[dict[str, Any]], list[dict[str, Any]]]]:
    """Log records and EMF records, pass by pass: each pass ends with its summary log line and its flush."""
    log_passes: list[list[dict[str, Any]]] = [[]]
    for record in logs:
        if str(record.get("message", "")).startswith("Health scan pass"):
            log_passes.append([])
        elif record.get("message") != "Health polling finished":
            log_passes[-1].append(record)
    metric_passes: list[list[dict[str, Any]]] = [[]]
    for emf in emf_records(printed):
        metric_passes[-1].append(emf)
        if "HealthScanDuration" in emf:
            metric_passes.append([])
    return list(zip(log_passes, metric_passes, strict=False))


def _metric_text(metric: Metric, report: ScenarioReport) -> str:
    """Count the removals and returns; the text of a metric worth showing ("" for the others)."""
    name, dims, value = metric
    if name == "TasksRestored":
        report.restored[dims.get("Reason", "")] += int(value)
    elif name == "TasksDeregistered":
        report.deregistered[dims.get("Reason", "")] += int(value)
    if not report.verbose and (name not in SHOWN_METRICS or (not value and name not in ALWAYS_SHOWN)):
        return ""
    dim = "".join(f"{{{k}={v}}}" for k, v in dims.items())
    return f"{name}{dim}={value:g}" if value.is_integer() else f"{name}{dim}={value:.1f}"


def _fields(label: str, record: dict[str, Any]) -> str:
    keys = ("reason", "outcome", "error", "consecutive_failures", "quarantined_seconds")
    return ", ".join([label, *(f"{k}={record[k]}" for k in keys if record.get(k) is not None)])


def _print_view(
    title: str,
    cast: QuarantineCast,
    fleet: FleetBuilder,
    *,
    records: list[QuarantineRecord],
    restored_now: set[str],
    out: Out,
) -> None:
    out(f"── {title} " + "─" * max(4, 60 - len(title)))
    quarantined = {(r.cloudmap_service_id, r.instance_id): r for r in records}
    now = time.time()
    for title_, service in cast.services.items():
        sid = service.cloudmap_service_ids[0]
        registered = fleet.instance_ids(sid)
        out(f"  {title_}  [{sid}]")
        for member in (m for m in cast.members if m.service is service):
            record = quarantined.get((sid, member.instance_id))
            if member.instance_id in registered:
                mark = "↺ back       " if member.label in restored_now else "✓ registered "
                ledger = ""
            else:
                mark = "✗ quarantined" if record else "✗ removed    "
                ledger = f"   ledger: {record.reason.value}, out {now - record.since:.1f} s" if record else ""
            out(f"    {mark} {member.label:<10} {member.instance_id[:8]}…  {member.state()}{ledger}")
    out("")


def _print_ledger(table: str, records: list[QuarantineRecord], cast: QuarantineCast, out: Out) -> None:
    out(f"── Quarantine ledger (DynamoDB {table}, pk=quarantine): {len(records)} record(s)")
    now = time.time()
    for record in sorted(records, key=lambda r: cast.label(r.instance_id)):
        out(
            f"    {cast.label(record.instance_id):<10} {record.service_name} [{record.cloudmap_service_id}]  "
            f"reason={record.reason.value} rule={record.rule.value} out for {now - record.since:.1f} s"
        )
        out("      attributes: " + ", ".join(f"{k}={v}" for k, v in sorted(record.attributes.items())))
    out("")


def _print_summary(report: ScenarioReport, out: Out) -> None:
    out("── The quarantine, in short " + "─" * 34)
    by_label: dict[str, list[Happened]] = {}
    for happened in report.happened:
        by_label.setdefault(happened.label, []).append(happened)
    for label, events in sorted(by_label.items()):
        steps = " → ".join(f"out as {h.reason}" if h.change == "removed" else "back" for h in events)
        steps += "  (" + ", ".join(f"invocation {h.invocation} pass {h.pass_number}" for h in events) + ")"
        same = report.identical.get(label)
        check = "" if same is None else (", attributes as before ✓" if same else ", attributes CHANGED ✗")
        out(f"    {label:<10} {steps}{check}")
    restored = ", ".join(f"{{Reason={r}}}={v:g}" for r, v in sorted(report.restored.items())) or "none"
    out(f"    metric TasksRestored: {restored}")
    out(f"    ledger records left: {report.ledger_left}")
    out("")


def _ledger(table: str) -> list[QuarantineRecord]:
    from cloudmap_reactor.adapters.ledger import DynamoDbLedger  # noqa: PLC0415

    return DynamoDbLedger(boto3.client("dynamodb"), table).quarantined()[0]


def _attributes(cast: QuarantineCast, fleet: FleetBuilder) -> dict[str, dict[str, str] | None]:
    """Each member's Cloud Map attributes now (None: not registered)."""
    listed: dict[str, dict[str, dict[str, str]]] = {}
    for service in cast.services.values():
        sid = service.cloudmap_service_ids[0]
        pages = fleet.cloudmap.get_paginator("list_instances").paginate(ServiceId=sid)
        listed[sid] = {i["Id"]: dict(i.get("Attributes", {})) for page in pages for i in page["Instances"]}
    return {m.label: listed[m.service.cloudmap_service_ids[0]].get(m.instance_id) for m in cast.members}
