"""Acting on decisions: the only code that writes to AWS (deregister an instance, redeploy a service).

Each action ends in a record (``Deregistration`` or ``Redeployment``) that says how it went; one
failure never stops the others. A dry run's held actions become records too (outcome ``dry_run``),
so logs and metrics read the same whether or not anything was written.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from cloudmap_reactor.core.decisions import Action, Decision, Deregister, Hold, Redeploy
from cloudmap_reactor.core.model import Deregistration, Outcome
from cloudmap_reactor.core.ports import AwsCallFailed, InstanceRemover, RemovalResult, ServiceRedeployer
from cloudmap_reactor.core.start_order import StaleClient


@dataclass(frozen=True, slots=True)
class Redeployment:
    """A stale client this pass redeployed (or, in a dry run, would have)."""

    client: StaleClient
    dry_run: bool
    error: str | None = None


@dataclass(frozen=True, slots=True)
class Acted:
    deregistrations: list[Deregistration]
    redeployments: list[Redeployment]

    @property
    def failed(self) -> list[Deregistration]:
        return [d for d in self.deregistrations if d.outcome is Outcome.FAILED]


class Actor:
    """Carries out a decision's actions with the given writers (``redeployer`` None: never redeploys)."""

    def __init__(self, *, remover: InstanceRemover, redeployer: ServiceRedeployer | None = None) -> None:
        self._remover = remover
        self._redeployer = redeployer

    def apply(self, decision: Decision) -> Acted:
        deregistrations = [self._deregister(a) for a in decision.actions if isinstance(a, Deregister)]
        redeployments = [self._redeploy(a) for a in decision.actions if isinstance(a, Redeploy)]
        for held in decision.held:
            if held.why is Hold.DRY_RUN and isinstance(held.action, Deregister):
                deregistrations.append(_record(held.action, Outcome.DRY_RUN))
            elif held.why is Hold.DRY_RUN and isinstance(held.action, Redeploy):
                redeployments.append(Redeployment(held.action.client, dry_run=True))
        return Acted(deregistrations, redeployments)

    def _deregister(self, action: Deregister) -> Deregistration:
        try:
            removed = self._remover.deregister_instance(action.cloudmap_service_id, action.instance_id)
        except AwsCallFailed as exc:
            return _record(action, Outcome.FAILED, str(exc))
        return _record(action, Outcome.DEREGISTERED if removed is RemovalResult.REMOVED else Outcome.ALREADY_GONE)

    def _redeploy(self, action: Redeploy) -> Redeployment:
        if self._redeployer is None:
            return Redeployment(action.client, dry_run=False, error="no redeployer")
        service = action.client.service
        try:
            self._redeployer.force_new_deployment(service.cluster_arn, service.service_name)
        except AwsCallFailed as exc:
            return Redeployment(action.client, dry_run=False, error=str(exc))
        return Redeployment(action.client, dry_run=False)


def deregistrations_of(actions: Iterable[Action]) -> list[Deregister]:
    return [a for a in actions if isinstance(a, Deregister)]


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
