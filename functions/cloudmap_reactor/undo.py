"""`cloudmap-reactor undo`: register again the instances the quarantine took out in a time range.

The source is the quarantine ledger: every instance taken out while its task ran has a record
with its exact Cloud Map attributes and the time it was taken out (``since``). An instance comes
back only if its record is consistent with its ECS service (the same check the poller makes:
``core.decide.recovery.is_consistent``) and ECS still reports its task RUNNING; then it is
registered with exactly the recorded id and attributes and the record is deleted, through the
poller's own ``Actor`` (which describes the task once more right before registering). Removals of
tasks ECS was stopping have no record and cannot be undone: those tasks are gone.

A dry run (the default) reads only and says what it would do. The removal logs are not read: the
ledger holds everything a restore needs, and a log line does not (it would mean inventing
attributes).
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from cloudmap_reactor.adapters.ecs import EcsReader
from cloudmap_reactor.core.decide.recovery import is_consistent
from cloudmap_reactor.core.decisions import Decision, QuarantineRecord, Restore
from cloudmap_reactor.core.model import EcsService, is_running
from cloudmap_reactor.core.ports import AwsCallFailed, QuarantineLedger
from cloudmap_reactor.poller.acting import Actor, Change

_DURATION = re.compile(r"^([0-9]{1,6})([smhd])$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400}
MAX_DURATION_SECONDS = 3650 * 86400


class Outcome(StrEnum):
    WOULD_RESTORE = "would-restore"  # dry run
    RESTORED = "restored"
    SKIPPED = "skipped"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class Window:
    """Removal times (epoch seconds) to undo, both ends included."""

    start: float
    end: float

    def __contains__(self, when: float) -> bool:
        return self.start <= when <= self.end


def parse_duration(text: str) -> float:
    """``90s``, ``30m``, ``2h``, ``1d`` → seconds."""
    match = _DURATION.fullmatch(text.strip())
    if not match:
        raise ValueError(f"{text!r} is not a duration like 90s, 30m, 2h or 1d")
    seconds = int(match.group(1)) * _UNIT[match.group(2)]
    if seconds > MAX_DURATION_SECONDS:
        raise ValueError(f"{text!r} is longer than 3650d (quarantine records live 14 days)")
    return float(seconds)


def parse_time(text: str) -> float:
    """An ISO 8601 time (``2026-12-02T06:30``, ``…Z``, ``…+01:00``; no zone: UTC) → epoch seconds."""
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"{text!r} is not an ISO 8601 time like 2026-12-02T06:30:00Z") from None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class Entry:
    record: QuarantineRecord
    outcome: Outcome
    why: str = ""

    def as_json(self) -> dict[str, Any]:
        r = self.record
        return {
            "outcome": self.outcome.value,
            "why": self.why or None,
            "cluster": r.cluster_arn,
            "service": r.service_name,
            "cloudmap_service_id": r.cloudmap_service_id,
            "instance_id": r.instance_id,
            "task_arn": r.task_arn,
            "reason": r.reason.value,
            "rule": r.rule.value,
            "removed_at": iso(r.since),
            "attributes": dict(r.attributes),
        }

    def line(self) -> str:
        r = self.record
        what = {
            Outcome.WOULD_RESTORE: "would register again",
            Outcome.RESTORED: "registered again",
            Outcome.SKIPPED: "skipped",
            Outcome.FAILED: "FAILED",
        }[self.outcome]
        why = f": {self.why}" if self.why else ""
        return (
            f"{what} {r.instance_id} in {r.cloudmap_service_id} ({r.service_name}, taken out {iso(r.since)} "
            f"for {r.reason.value}, {len(r.attributes)} attribute(s)){why}"
        )


@dataclass(slots=True)
class UndoReport:
    window: Window
    applied: bool
    records: int = 0  # quarantine records in the ledger
    unreadable: int = 0  # ledger items that are not records (never acted on)
    entries: list[Entry] = field(default_factory=list)

    def count(self, outcome: Outcome) -> int:
        return sum(1 for e in self.entries if e.outcome is outcome)

    def summary(self) -> str:
        counts = ", ".join(f"{self.count(o)} {o.value}" for o in Outcome if self.count(o) or o is Outcome.SKIPPED)
        head = f"{len(self.entries)} of {self.records} quarantine record(s) taken out from {iso(self.window.start)}"
        tail = "" if self.applied else "; dry run: nothing was registered or deleted (--apply to act)"
        return f"{head} to {iso(self.window.end)}: {counts}{tail}"

    def as_json(self) -> dict[str, Any]:
        return {
            "applied": self.applied,
            "from": iso(self.window.start),
            "to": iso(self.window.end),
            "records": self.records,
            "unreadable_items": self.unreadable,
            "counts": {o.value: self.count(o) for o in Outcome},
            "instances": [e.as_json() for e in self.entries],
        }


def undo(
    ledger: QuarantineLedger,
    ecs: EcsReader,
    window: Window,
    *,
    actor: Actor | None = None,  # None: dry run
    clusters: Sequence[str] = (),
    services: Sequence[str] = (),
) -> UndoReport:
    """Check every record of the window and, with ``actor``, restore those whose task still runs."""
    report = UndoReport(window, applied=actor is not None)
    records, report.unreadable = ledger.quarantined()
    report.records = len(records)
    chosen = sorted(
        (r for r in records if r.since in window and _wanted(r, clusters, services)),
        key=lambda r: (r.since, r.cloudmap_service_id, r.instance_id),
    )
    restorable: list[QuarantineRecord] = []
    by_cluster: dict[str, list[QuarantineRecord]] = defaultdict(list)
    for record in chosen:
        by_cluster[record.cluster_arn].append(record)
    for cluster, batch in by_cluster.items():
        checked, skipped = _check(ecs, cluster, batch)
        report.entries += skipped
        restorable += checked
    if actor is None:
        report.entries += [Entry(r, Outcome.WOULD_RESTORE, "its task is RUNNING") for r in restorable]
    else:
        report.entries += _restore(actor, restorable)
    report.entries.sort(key=lambda e: (e.record.since, e.record.cloudmap_service_id, e.record.instance_id))
    return report


def _wanted(record: QuarantineRecord, clusters: Sequence[str], services: Sequence[str]) -> bool:
    """In one of ``clusters`` (names or ARNs) and ``services`` (names); empty: every one."""
    cluster_name = record.cluster_arn.rsplit("/", 1)[-1]
    in_cluster = not clusters or record.cluster_arn in clusters or cluster_name in clusters
    return in_cluster and (not services or record.service_name in services)


def _check(ecs: EcsReader, cluster: str, records: list[QuarantineRecord]) -> tuple[list[QuarantineRecord], list[Entry]]:
    """(records that may come back, entries of those that may not) for one cluster."""
    try:
        found: dict[str, EcsService] = {
            s.service_name: s for s in ecs.describe_services(cluster, sorted({r.service_name for r in records}))
        }
        tasks = {t.task_id: t for t in ecs.describe_tasks(cluster, sorted({r.task_arn for r in records}))}
    except AwsCallFailed as exc:
        return [], [Entry(r, Outcome.FAILED, f"could not read ECS, so not registered: {exc}") for r in records]
    ok: list[QuarantineRecord] = []
    skipped: list[Entry] = []
    for record in records:
        service = found.get(record.service_name)
        task = tasks.get(record.instance_id)
        if service is None:
            skipped.append(Entry(record, Outcome.SKIPPED, "its ECS service no longer exists"))
        elif not is_consistent(record, service):
            skipped.append(Entry(record, Outcome.SKIPPED, "the record does not match its ECS service: never acted on"))
        elif task is None or not is_running(task):
            state = "unknown to ECS" if task is None else f"{task.last_status}, desired {task.desired_status}"
            skipped.append(Entry(record, Outcome.SKIPPED, f"its task is not running ({state}): never registered"))
        elif task.service_name != record.service_name:
            skipped.append(Entry(record, Outcome.SKIPPED, "its task belongs to another service: never acted on"))
        else:
            ok.append(record)
    return ok, skipped


def _restore(actor: Actor, records: Iterable[QuarantineRecord]) -> list[Entry]:
    """Through the poller's writer: DescribeTasks right before, RegisterInstance, then DeleteItem."""
    acted = actor.apply(Decision(actions=[Restore(r) for r in records]))
    entries = []
    for change in acted.ledger:
        if change.error is not None:
            entries.append(Entry(change.record, Outcome.FAILED, change.error))
        elif change.change is Change.FORGOTTEN:
            entries.append(
                Entry(change.record, Outcome.SKIPPED, "its task stopped just before: not registered, record deleted")
            )
        else:
            entries.append(Entry(change.record, Outcome.RESTORED))
    return entries
