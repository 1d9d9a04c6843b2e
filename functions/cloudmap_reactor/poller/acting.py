"""Acting on decisions: the only code that writes to AWS (Cloud Map, the ledger, ECS).

Each action ends in a record that says how it went; one failure never stops the others. A dry
run's held actions become records too (outcome ``dry_run``), so logs and metrics read the same
whether or not anything was written.

Removal and return are symmetrical and recorded: an instance taken out while its task runs is
first written to the ledger with its exact attributes (a record that could not be written means
no deregistration); it comes back only if ECS still runs its task right before, by registering exactly those
attributes, then deleting the record.
"""

from __future__ import annotations

from contextlib import suppress
from dataclasses import dataclass
from enum import StrEnum

from cloudmap_reactor.core.decisions import (
    Decision,
    Deregister,
    Forget,
    Hold,
    QuarantineRecord,
    Redeploy,
    Restore,
    StopTask,
)
from cloudmap_reactor.core.model import Deregistration, Outcome, is_running
from cloudmap_reactor.core.ports import (
    AwsCallFailed,
    InstanceRegistrar,
    InstanceRemover,
    QuarantineLedger,
    RemovalResult,
    ServiceRedeployer,
    TaskDescriber,
    TaskStopper,
)
from cloudmap_reactor.core.start_order import StaleClient


@dataclass(frozen=True, slots=True)
class Redeployment:
    """A stale client this pass redeployed (or, in a dry run, would have)."""

    client: StaleClient
    dry_run: bool
    error: str | None = None


class Change(StrEnum):
    RESTORED = "restored"
    FORGOTTEN = "forgotten"
    REPLACED = "replaced"


@dataclass(frozen=True, slots=True)
class LedgerChange:
    """A quarantined instance registered again, forgotten, or its task stopped (or a dry run's)."""

    change: Change
    record: QuarantineRecord
    dry_run: bool = False
    error: str | None = None


@dataclass(frozen=True, slots=True)
class Acted:
    deregistrations: list[Deregistration]
    redeployments: list[Redeployment]
    ledger: list[LedgerChange]

    @property
    def failed(self) -> list[Deregistration]:
        return [d for d in self.deregistrations if d.outcome is Outcome.FAILED]


class Actor:
    """Carries out a decision's actions with the given writers (None: that kind of action is not possible)."""

    def __init__(
        self,
        *,
        remover: InstanceRemover,
        registrar: InstanceRegistrar | None = None,
        ledger: QuarantineLedger | None = None,
        redeployer: ServiceRedeployer | None = None,
        stopper: TaskStopper | None = None,
        tasks: TaskDescriber | None = None,
    ) -> None:
        self._tasks = tasks
        self._remover = remover
        self._registrar = registrar
        self._ledger = ledger
        self._redeployer = redeployer
        self._stopper = stopper

    def apply(self, decision: Decision) -> Acted:
        acted = Acted([], [], [])
        for action in decision.actions:
            if isinstance(action, Deregister):
                acted.deregistrations.append(self._deregister(action))
            elif isinstance(action, Redeploy):
                acted.redeployments.append(self._redeploy(action))
            elif isinstance(action, Restore):
                acted.ledger.append(self._restore(action.record))
            elif isinstance(action, Forget):
                acted.ledger.append(self._forget(action.record))
            else:
                acted.ledger.append(self._stop(action))
        for held in decision.held:
            if held.why is not Hold.DRY_RUN or held.action is None:
                continue
            action = held.action
            if isinstance(action, Deregister):
                acted.deregistrations.append(_record(action, Outcome.DRY_RUN))
            elif isinstance(action, Redeploy):
                acted.redeployments.append(Redeployment(action.client, dry_run=True))
            else:
                change = {Restore: Change.RESTORED, Forget: Change.FORGOTTEN, StopTask: Change.REPLACED}[type(action)]
                acted.ledger.append(LedgerChange(change, action.record, dry_run=True))
        return acted

    def _deregister(self, action: Deregister) -> Deregistration:
        recorded = action.quarantine
        if action.quarantine is not None:
            if self._ledger is None:
                return _record(action, Outcome.FAILED, "no ledger to record the quarantine in")
            try:
                recorded = self._ledger.record(action.quarantine)
            except AwsCallFailed as exc:  # no record, no removal: it could never come back
                return _record(action, Outcome.FAILED, f"quarantine record not written: {exc}")
        try:
            removed = self._remover.deregister_instance(action.cloudmap_service_id, action.instance_id)
        except AwsCallFailed as exc:
            if recorded is not None:
                self._forget_quietly(recorded)  # still registered: not quarantined
            return _record(action, Outcome.FAILED, str(exc))
        return _record(action, Outcome.DEREGISTERED if removed is RemovalResult.REMOVED else Outcome.ALREADY_GONE)

    def _restore(self, record: QuarantineRecord) -> LedgerChange:
        """Check the task still runs (ECS may have decided to stop it since the pass read it), register, forget.

        Registering first and deleting the record after keeps the record until the instance is back:
        a failure in between leaves a record that the next pass restores again (registering the
        same id with the same attributes is harmless).
        """
        if self._ledger is None or self._registrar is None or self._tasks is None:
            return LedgerChange(Change.RESTORED, record, error="no ledger, registrar or task reader")
        try:
            now = self._tasks.describe_tasks(record.cluster_arn, [record.task_arn])
            if not any(is_running(t) and t.task_id == record.instance_id for t in now):
                self._ledger.forget(record)  # stopping, stopped or gone: never registered again
                return LedgerChange(Change.FORGOTTEN, record)
            self._registrar.register_instance(record.cloudmap_service_id, record.instance_id, record.attributes)
            self._ledger.forget(record)
        except AwsCallFailed as exc:
            return LedgerChange(Change.RESTORED, record, error=str(exc))
        return LedgerChange(Change.RESTORED, record)

    def _forget(self, record: QuarantineRecord) -> LedgerChange:
        if self._ledger is None:
            return LedgerChange(Change.FORGOTTEN, record, error="no ledger")
        try:
            self._ledger.forget(record)
        except AwsCallFailed as exc:
            return LedgerChange(Change.FORGOTTEN, record, error=str(exc))
        return LedgerChange(Change.FORGOTTEN, record)

    def _stop(self, action: StopTask) -> LedgerChange:
        record = action.record
        if self._stopper is None:
            return LedgerChange(Change.REPLACED, record, error="no task stopper")
        reason = f"cloudmap-reactor: failed its HTTP checks in {record.cloudmap_service_id} (quarantined)"
        try:
            self._stopper.stop_task(record.cluster_arn, record.task_arn, reason)
        except AwsCallFailed as exc:
            return LedgerChange(Change.REPLACED, record, error=str(exc))
        return LedgerChange(Change.REPLACED, record)

    def _forget_quietly(self, record: QuarantineRecord) -> None:
        if self._ledger is None:
            return
        # If this fails too, a quarantined key seen registered in a later listing is judged again.
        with suppress(AwsCallFailed):
            self._ledger.forget(record)

    def _redeploy(self, action: Redeploy) -> Redeployment:
        if self._redeployer is None:
            return Redeployment(action.client, dry_run=False, error="no redeployer")
        service = action.client.service
        try:
            self._redeployer.force_new_deployment(service.cluster_arn, service.service_name)
        except AwsCallFailed as exc:
            return Redeployment(action.client, dry_run=False, error=str(exc))
        return Redeployment(action.client, dry_run=False)


def _record(action: Deregister, outcome: Outcome, error: str | None = None) -> Deregistration:
    return Deregistration(
        cluster_arn=action.cluster_arn,
        service_name=action.service_name,
        task_arn=action.task_arn,
        cloudmap_service_id=action.cloudmap_service_id,
        reason=action.reason,
        outcome=outcome,
        error=error,
        rule=action.rule.value,
    )
