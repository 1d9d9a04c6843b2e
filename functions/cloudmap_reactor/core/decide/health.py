"""Leaving Cloud Map for health or readiness, and the fail-open guard that can hold it all back."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import replace

from cloudmap_reactor.config import Policy
from cloudmap_reactor.core.decisions import (
    Action,
    ClusterSnapshot,
    Decision,
    Deregister,
    GuardVerdict,
    Held,
    Hold,
    Memory,
    ProbeStreak,
    QuarantineRecord,
    Rule,
)
from cloudmap_reactor.core.model import (
    HEALTHY,
    HOLD_UNTIL_HEALTHY_TAG,
    QUARANTINE_REASONS,
    UNHEALTHY,
    EcsService,
    Reason,
    TaskSnapshot,
    is_running,
    is_true,
)


def required_healthy(running: int, min_healthy_percent: float) -> int:
    """How many of ``running`` tasks must stay registered and healthy (0: the guard is off)."""
    if min_healthy_percent <= 0:
        return 0
    return max(1, math.ceil(running * min_healthy_percent / 100 - 1e-9))


def health_removals(
    service: EcsService, task: TaskSnapshot, snapshot: ClusterSnapshot, policy: Policy
) -> list[Deregister]:
    """The Cloud Map services a running task should leave for its health or readiness (before the guard).

    ECS ``UNHEALTHY``: every Cloud Map service of its service. Held until healthy (tag or policy)
    and not ``HEALTHY`` yet: every one, ``NotReady``. HTTP probes, per Cloud Map service: failures
    before the instance ever passed mean not ready yet (``NotReady``, at once); after it passed,
    ``probe_failure_threshold`` failures in a row (``ProbeFailed``). Readiness needs the ledger
    (``LEDGER_TABLE``): without a way back, a task is never taken out for not being ready yet.
    """
    if not is_running(task):
        return []
    sids = sorted(service.cloudmap_service_ids)
    quarantine = bool(policy.ledger_table)
    hold = quarantine and (policy.hold_until_healthy or is_true(service.tag(HOLD_UNTIL_HEALTHY_TAG)))
    if task.health_status == UNHEALTHY:
        found = [(sid, Reason.UNHEALTHY, Rule.ECS_UNHEALTHY) for sid in sids]
    elif hold and task.health_status != HEALTHY:
        found = [(sid, Reason.NOT_READY, Rule.NOT_READY_HEALTH) for sid in sids]
    else:
        found = []
        for sid in sids:
            streak = snapshot.probes.get((sid, task.task_id), ProbeStreak())
            if quarantine and not streak.passed and streak.failures:
                found.append((sid, Reason.NOT_READY, Rule.NOT_READY_PROBE))
            elif streak.failures >= policy.probe_failure_threshold:
                found.append((sid, Reason.PROBE_FAILED, Rule.PROBE_THRESHOLD))
    cluster, name = service.cluster_arn, service.service_name
    return [Deregister(cluster, name, task.task_arn, sid, reason, rule) for sid, reason, rule in found]


def guarded(
    removals: list[Deregister], snapshot: ClusterSnapshot, memory: Memory, policy: Policy, decision: Decision
) -> list[Action]:
    """Apply the fail-open guard per Cloud Map service to the pass's health removals."""
    by_sid: dict[str, list[Deregister]] = defaultdict(list)
    for removal in removals:
        by_sid[removal.cloudmap_service_id].append(removal)
    # Already taken out: nothing to list for. (A quarantined instance seen registered all the same,
    # say after a failed deregistration, is judged again.)
    listed = {(sid, iid) for sid, ids in snapshot.instances.items() for iid in ids}
    out = ({r.key for r in snapshot.quarantined} - listed) | memory.removed
    approved: list[Action] = []
    for sid, candidates in sorted(by_sid.items()):
        pending = [c for c in candidates if c.key not in out]
        if not pending:
            continue
        if sid not in snapshot.fresh:
            decision.needs_listing.add(sid)  # the guard judges what is registered now: read it first
            continue
        now_listed = snapshot.instances[sid]
        registered = set(now_listed) - {iid for s, iid in memory.removed if s == sid}
        owners = sorted(n for n, s in snapshot.services.items() if sid in s.cloudmap_service_ids)
        running = {t.task_id for t in snapshot.tasks if is_running(t) and t.service_name in owners}
        failing = {c.instance_id for c in candidates}
        verdict = GuardVerdict(
            cloudmap_service_id=sid,
            service_names=tuple(owners),
            running=len(running),
            healthy_registered=len((registered & running) - failing),
            required=required_healthy(len(running), policy.min_healthy_percent),
            failing=len(failing & registered),
            holds=False,
        )
        present = [_quarantined(c, now_listed[c.instance_id], policy) for c in pending if c.instance_id in registered]
        if not present:
            continue  # nothing registered to take out (gone already, or never registered)
        if verdict.healthy_registered < verdict.required:
            decision.guard.append(_holding(verdict))
            why = f"{verdict.healthy_registered} healthy registered, {verdict.required} required"
            decision.held.extend(Held(Hold.FAIL_OPEN, why, c) for c in present)
            continue
        decision.guard.append(verdict)
        approved.extend(present)
    return approved


def _quarantined(removal: Deregister, attributes: Mapping[str, str], policy: Policy) -> Deregister:
    """A health removal of a running task is recorded first (with the exact attributes), when there is a ledger."""
    if not policy.ledger_table or removal.reason not in QUARANTINE_REASONS:
        return removal
    record = QuarantineRecord(
        removal.cloudmap_service_id,
        removal.instance_id,
        dict(attributes),
        removal.task_arn,
        removal.cluster_arn,
        removal.service_name,
        removal.reason,
        removal.rule,
    )
    return replace(removal, quarantine=record)


def _holding(verdict: GuardVerdict) -> GuardVerdict:
    return GuardVerdict(
        verdict.cloudmap_service_id,
        verdict.service_names,
        verdict.running,
        verdict.healthy_registered,
        verdict.required,
        verdict.failing,
        holds=True,
    )
