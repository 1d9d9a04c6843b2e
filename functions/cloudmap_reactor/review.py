"""The read-only looks behind `cloudmap-reactor plan` and `doctor`: the poller's own reading and decisions.

``plan`` is a poller pass with no actor: the same reader, the same ``core.decide``, the same
memory of a first pass, so what it lists is what the poller would do. ``doctor`` reads every
Cloud Map service (in scope or not), decides, and shows Cloud Map next to ECS per service.
Neither probes over HTTP (they usually run outside the tasks' VPC).

Both read the quarantine ledger when they are given one (a ``DynamoDbLedger`` over a read-only
client: one ``Query``): ``plan`` then lists the quarantined instances and what the poller would
restore, forget or replace, and ``doctor`` counts them per service. With no actor the scanner
never takes the poller's lease, so neither ever writes to the ledger.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from cloudmap_reactor.adapters.cloudmap import CloudMapDeregistrar
from cloudmap_reactor.adapters.deadline import aws_deadline
from cloudmap_reactor.adapters.ecs import EcsReader
from cloudmap_reactor.config import Policy
from cloudmap_reactor.core.decide import decide_cluster
from cloudmap_reactor.core.decisions import (
    Action,
    Deregister,
    Forget,
    Hold,
    QuarantineRecord,
    Redeploy,
    Restore,
    StopTask,
)
from cloudmap_reactor.core.diagnosis import Diagnosis, diagnose_cluster
from cloudmap_reactor.core.ports import AwsCallFailed, QuarantineLedger
from cloudmap_reactor.poller.memory import InvocationMemory
from cloudmap_reactor.poller.reading import ClusterSkipped, PassReader, ServiceReadFailure
from cloudmap_reactor.poller.scanner import ALL_CLUSTERS, HealthPassResult, HealthScanner

READ_SECONDS = 300.0  # a CLI run waits for slow clusters longer than a pass would


def reader_for(ecs: Any, cloudmap: Any, policy: Policy) -> PassReader:
    calls = ThreadPoolExecutor(max_workers=policy.scan_concurrency)
    return PassReader(
        fleet=EcsReader(ecs, executor=calls),
        registry=CloudMapDeregistrar(cloudmap),
        policy=policy,
        clusters=ThreadPoolExecutor(max_workers=policy.scan_concurrency),
        calls=calls,
    )


def plan(reader: PassReader, policy: Policy, ledger: QuarantineLedger | None = None) -> HealthPassResult:
    """One poller pass (a first pass: it reconciles), decided and never acted on.

    With ``ledger`` the pass reads the quarantine records as the poller does, so what it would
    restore, forget or replace is decided too (``policy.ledger_table`` should name the same table:
    readiness and quarantine records follow it).
    """
    scanner = HealthScanner(reader=reader, policy=policy, actor=None, ledger=ledger)
    return scanner.run_pass(deadline=time.monotonic() + READ_SECONDS)


def plan_report(result: HealthPassResult, ledger_table: str | None = None) -> dict[str, Any]:
    """What ``plan`` prints as JSON: every action with its reason and rule, and what is held back.

    ``ledger_table``: the quarantine ledger the pass read (None: not read, so ``quarantined`` is
    unknown and nothing is restored, forgotten or replaced).
    """
    planned = result.decision.planned()
    return {
        "ledger": {
            "table": ledger_table,
            "read": ledger_table is not None and all(s.cluster_arn != ALL_CLUSTERS for s in result.skipped_clusters),
            "unreadable_items": result.ledger_unreadable,
        },
        "quarantined": quarantine_entries(result.quarantined, result.now),
        "restore": _quarantine_actions(planned, Restore),
        "forget": _quarantine_actions(planned, Forget),
        "replace": _quarantine_actions(planned, StopTask),
        "restore_held": _quarantine_actions(
            (h.action for h in result.decision.held if h.why is Hold.RETURN_OFF), Restore
        ),
        "deregister": [
            {
                "cluster": a.cluster_arn,
                "service": a.service_name,
                "instance_id": a.instance_id,
                "cloudmap_service_id": a.cloudmap_service_id,
                "reason": a.reason.value,
                "rule": a.rule.value,
            }
            for a in planned
            if isinstance(a, Deregister)
        ],
        "redeploy": [a.client.service.service_name for a in planned if isinstance(a, Redeploy)],
        "fail_open": [
            {
                "cloudmap_service_id": v.cloudmap_service_id,
                "services": list(v.service_names),
                "healthy_registered": v.healthy_registered,
                "required": v.required,
            }
            for v in result.fail_open
        ],
        "orphan_instances": [o.instance_id for o in result.orphans],
        "stale_clients": [s.service.service_name for s in result.stale_clients],
        "clusters_not_scanned": [
            {"cluster": s.cluster_arn, "reason": s.reason, "error": s.error} for s in result.skipped_clusters
        ],
        "read_failures": [
            {"cluster": f.cluster_arn, "service": f.service_name, "error": f.error} for f in result.read_failures
        ],
    }


def quarantine_entries(records: Iterable[QuarantineRecord], now: float) -> list[dict[str, Any]]:
    """The quarantined instances as ``plan`` and ``status`` show them: each record's fields, how long."""
    return [
        {**_record(r), "rule": r.rule.value, "quarantined_seconds": round(max(0.0, now - r.since))}
        for r in sorted(records, key=lambda r: (r.cluster_arn, r.service_name, r.key))
    ]


def _record(record: QuarantineRecord) -> dict[str, str]:
    return {
        "cluster": record.cluster_arn,
        "service": record.service_name,
        "instance_id": record.instance_id,
        "cloudmap_service_id": record.cloudmap_service_id,
        "task_arn": record.task_arn,
        "reason": record.reason.value,  # why it was taken out
    }


def _quarantine_actions(
    actions: Iterable[Action | None], kind: type[Restore | Forget | StopTask]
) -> list[dict[str, str]]:
    """The quarantine actions of one kind: each record's fields and the rule of the action."""
    return [{**_record(a.record), "rule": a.rule.value} for a in actions if isinstance(a, kind)]


@dataclass(slots=True)
class DoctorReport:
    diagnosis: Diagnosis = field(default_factory=Diagnosis)
    skipped: list[ClusterSkipped] = field(default_factory=list)
    read_failures: list[ServiceReadFailure] = field(default_factory=list)  # parts of clusters not read
    ledger_read: bool = False  # the quarantine ledger was given and could be read
    ledger_records: int = 0
    ledger_unreadable: int = 0  # stored items that are not records
    ledger_error: str | None = None  # it was given and could not be read


def doctor(
    reader: PassReader, policy: Policy, clusters: list[str], ledger: QuarantineLedger | None = None
) -> DoctorReport:
    """Every cluster read with all its Cloud Map services listed, decided, and diagnosed per service.

    With ``ledger`` the quarantine records are read first (one ``Query``) and decided with the
    clusters, so each service shows its quarantined instances and what the poller would do with them.
    """
    memory = InvocationMemory()
    memory.next_pass()
    report = DoctorReport()
    deadline = time.monotonic() + READ_SECONDS
    records: list[QuarantineRecord] = []
    if ledger is not None:
        try:
            with aws_deadline(deadline):
                records, report.ledger_unreadable = ledger.quarantined()
            report.ledger_read, report.ledger_records = True, len(records)
        except AwsCallFailed as exc:
            report.ledger_error = str(exc)
    reads = reader.read_clusters(clusters, memory, deadline=deadline, list_every_service=True)
    scanner = HealthScanner(reader=reader, policy=policy, actor=None)
    scanner.memory = memory
    now = time.time()
    for read in reads:
        if isinstance(read, ClusterSkipped):
            report.skipped.append(read)
            continue
        report.read_failures.extend(read.failures)
        read.fresh.update(read.instances)  # nothing acts on it: every listing is as fresh as it gets
        quarantined = tuple(r for r in records if r.cluster_arn == read.cluster_arn)
        snapshot = scanner.snapshot(read, {}, quarantined, now)
        decision = decide_cluster(snapshot, memory.for_decisions(), policy)
        report.diagnosis.services.extend(diagnose_cluster(snapshot, decision, policy, ledger_read=report.ledger_read))
    return report
