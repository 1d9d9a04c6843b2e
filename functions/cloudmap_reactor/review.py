"""The read-only looks behind `cloudmap-reactor plan` and `doctor`: the poller's own reading and decisions.

``plan`` is a poller pass with no actor: the same reader, the same ``core.decide``, the same
memory of a first pass, so what it lists is what the poller would do. ``doctor`` reads every
Cloud Map service (in scope or not), decides, and shows Cloud Map next to ECS per service.
Neither probes over HTTP (they usually run outside the tasks' VPC).
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from cloudmap_reactor.adapters.cloudmap import CloudMapDeregistrar
from cloudmap_reactor.adapters.ecs import EcsReader
from cloudmap_reactor.config import Policy
from cloudmap_reactor.core.decide import decide_cluster
from cloudmap_reactor.core.decisions import Deregister, Redeploy
from cloudmap_reactor.core.diagnosis import Diagnosis, diagnose_cluster
from cloudmap_reactor.poller.memory import InvocationMemory
from cloudmap_reactor.poller.reading import ClusterSkipped, PassReader
from cloudmap_reactor.poller.scanner import HealthPassResult, HealthScanner

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


def plan(reader: PassReader, policy: Policy) -> HealthPassResult:
    """One poller pass (a first pass: it reconciles), decided and never acted on."""
    scanner = HealthScanner(reader=reader, policy=policy, actor=None)
    return scanner.run_pass(deadline=time.monotonic() + READ_SECONDS)


def plan_report(result: HealthPassResult) -> dict[str, list[Any]]:
    """What ``plan`` prints as JSON: every action with its reason and rule, and what is held back."""
    planned = result.decision.planned()
    return {
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
    }


@dataclass(slots=True)
class DoctorReport:
    diagnosis: Diagnosis = field(default_factory=Diagnosis)
    skipped: list[ClusterSkipped] = field(default_factory=list)


def doctor(reader: PassReader, policy: Policy, clusters: list[str]) -> DoctorReport:
    """Every cluster read with all its Cloud Map services listed, decided, and diagnosed per service."""
    memory = InvocationMemory()
    memory.next_pass()
    report = DoctorReport()
    reads = reader.read_clusters(clusters, memory, deadline=time.monotonic() + READ_SECONDS, list_every_service=True)
    scanner = HealthScanner(reader=reader, policy=policy, actor=None)
    scanner.memory = memory
    for read in reads:
        if isinstance(read, ClusterSkipped):
            report.skipped.append(read)
            continue
        read.fresh.update(read.instances)  # nothing acts on it: every listing is as fresh as it gets
        snapshot = scanner.snapshot(read, {})
        decision = decide_cluster(snapshot, memory.for_decisions(), policy)
        report.diagnosis.services.extend(diagnose_cluster(snapshot, decision, policy))
    return report
