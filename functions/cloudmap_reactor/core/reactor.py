"""React to one ECS task that is going away: take it out of Cloud Map now."""

from __future__ import annotations

from dataclasses import dataclass, field

from cloudmap_reactor.core.deregistration import deregister_task
from cloudmap_reactor.core.model import Deregistration, Outcome, Reason, TagScope
from cloudmap_reactor.core.ports import InstanceRemover
from cloudmap_reactor.core.service_cache import CachedServiceLookup


@dataclass(frozen=True, slots=True)
class StoppingTask:
    """A validated task that ECS has decided to stop, belonging to an ECS service."""

    cluster_arn: str
    task_arn: str
    service_name: str


@dataclass(frozen=True, slots=True)
class ReactorResult:
    service_found: bool
    uses_cloudmap: bool
    in_scope: bool = True
    deregistrations: list[Deregistration] = field(default_factory=list)

    @property
    def failed(self) -> list[Deregistration]:
        return [d for d in self.deregistrations if d.outcome is Outcome.FAILED]


def handle_stopping_task(
    task: StoppingTask,
    *,
    services: CachedServiceLookup,
    remover: InstanceRemover,
    dry_run: bool,
    scope: TagScope = TagScope.OPT_OUT,
) -> ReactorResult:
    """Deregister the task from every Cloud Map service of its ECS service (all deployments).

    A stopping task always leaves (no fail-open here: it is going away anyway), unless its
    service's tags put it out of this tool's scope.
    """
    service = services.get(task.cluster_arn, task.service_name)
    if service is None:
        return ReactorResult(service_found=False, uses_cloudmap=False)
    if not service.uses_cloudmap:
        return ReactorResult(service_found=True, uses_cloudmap=False)
    if not service.in_scope(scope):
        return ReactorResult(service_found=True, uses_cloudmap=True, in_scope=False)
    deregistrations = deregister_task(
        cluster_arn=task.cluster_arn,
        service_name=task.service_name,
        task_arn=task.task_arn,
        cloudmap_service_ids=service.cloudmap_service_ids,
        reason=Reason.TASK_STOPPING,
        remover=remover,
        dry_run=dry_run,
    )
    return ReactorResult(service_found=True, uses_cloudmap=True, deregistrations=deregistrations)
