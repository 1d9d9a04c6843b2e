"""AWS faults: botocore retries them (adaptive mode), then the handler raises so nothing is lost.

Two kinds of fault, each a real new attempt through botocore's retry machinery (only the
back-off sleep is skipped):

* a 503 ``ServiceUnavailableException`` answered by the local emulator itself, and
* a read timeout raised before the request reaches the emulator.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from botocore.exceptions import ReadTimeoutError
from moto.core.exceptions import JsonRESTError
from moto.servicediscovery.models import ServiceDiscoveryBackend

from cloudmap_reactor.adapters.clients import TOTAL_MAX_ATTEMPTS, cloudmap_client
from cloudmap_reactor.handlers import task_state_change
from devtools.aws_emulator import FleetBuilder, SeededService
from devtools.local_lambda import FakeLambdaContext
from tests.conftest import task_event


class ServiceUnavailable(JsonRESTError):
    code = 503

    def __init__(self) -> None:
        super().__init__("ServiceUnavailableException", "injected fault")


@dataclass
class Faults:
    """Fail the first ``failures`` attempts of Cloud Map's DeregisterInstance."""

    failures: int
    attempts: int = 0

    def should_fail(self) -> bool:
        self.attempts += 1
        return self.attempts <= self.failures


@pytest.fixture(autouse=True)
def no_backoff_sleep(mocker: Any) -> None:
    mocker.patch("botocore.endpoint.time.sleep")


@pytest.fixture
def orders(aws: FleetBuilder) -> SeededService:
    aws.create_cluster("prod")
    service = aws.create_service("prod", "orders", discovery_names=["orders"])
    aws.start_tasks(service, 2)
    return service


def unavailable(mocker: Any, failures: int) -> Faults:
    """The emulator answers HTTP 503, as Cloud Map does when it is briefly unavailable."""
    faults = Faults(failures)
    real = ServiceDiscoveryBackend.deregister_instance

    def deregister_instance(self: Any, service_id: str, instance_id: str) -> str:
        if faults.should_fail():
            raise ServiceUnavailable
        return real(self, service_id, instance_id)

    mocker.patch.object(ServiceDiscoveryBackend, "deregister_instance", deregister_instance)
    return faults


def timing_out(failures: int) -> Faults:
    """The request never gets an answer in time (raised before it reaches the emulator)."""
    faults = Faults(failures)

    def before_send(request: Any, **_: Any) -> None:
        if faults.should_fail():
            raise ReadTimeoutError(endpoint_url=request.url)

    cloudmap_client().meta.events.register_first("before-send.servicediscovery.DeregisterInstance", before_send)
    return faults


def stop(orders: SeededService, context: FakeLambdaContext) -> Any:
    return task_state_change.lambda_handler(
        task_event(orders.task_arns[0], orders.cluster_arn, group="service:orders"), context
    )


@pytest.mark.parametrize("kind", ["503", "timeout"])
def test_transient_faults_are_retried_and_the_task_still_leaves(
    aws: FleetBuilder,
    orders: SeededService,
    lambda_context: FakeLambdaContext,
    read_output: Any,
    mocker: Any,
    kind: str,
) -> None:
    faults = unavailable(mocker, 2) if kind == "503" else timing_out(2)

    assert stop(orders, lambda_context)["status"] == "processed"

    assert faults.attempts == 3
    assert aws.instance_ids(orders.cloudmap_service_ids[0]) == {orders.task_arns[1].rsplit("/", 1)[-1]}
    assert read_output().metrics.value("DeregistrationErrors") == 0


@pytest.mark.parametrize("kind", ["503", "timeout"])
def test_persistent_fault_is_retried_then_raised_for_the_dead_letter_queue(
    aws: FleetBuilder,
    orders: SeededService,
    lambda_context: FakeLambdaContext,
    read_output: Any,
    mocker: Any,
    kind: str,
) -> None:
    faults = unavailable(mocker, 1000) if kind == "503" else timing_out(1000)

    with pytest.raises(task_state_change.DeregistrationFailed):
        stop(orders, lambda_context)

    assert faults.attempts == TOTAL_MAX_ATTEMPTS
    assert len(aws.instance_ids(orders.cloudmap_service_ids[0])) == 2
    assert read_output().metrics.value("DeregistrationErrors") == 1


class Throttled(JsonRESTError):
    def __init__(self) -> None:
        super().__init__("ThrottlingException", "Rate exceeded")


def test_poller_throttled_beyond_botocore_retries_finishes_late_rather_than_failing(
    aws: FleetBuilder, orders: SeededService, lambda_context: FakeLambdaContext, mocker: Any
) -> None:
    from moto.ecs.models import EC2ContainerServiceBackend

    from cloudmap_reactor import wiring
    from cloudmap_reactor.handlers import health_poller
    from tests.conftest import load_event

    mocker.patch("cloudmap_reactor.adapters.ecs.THROTTLE_BACKOFF_SECONDS", 0)
    aws.set_health(orders.task_arns[0], "UNHEALTHY")
    faults = Faults(TOTAL_MAX_ATTEMPTS + 2)  # more than botocore alone retries
    real = EC2ContainerServiceBackend.describe_tasks

    def describe_tasks(self: Any, cluster: str, tasks: list[str]) -> Any:
        if faults.should_fail():
            raise Throttled
        return real(self, cluster, tasks)

    mocker.patch.object(EC2ContainerServiceBackend, "describe_tasks", describe_tasks)

    result = health_poller.lambda_handler(load_event("scheduled-poll.json"), lambda_context)

    assert result["status"] == "completed"
    assert faults.attempts == TOTAL_MAX_ATTEMPTS + 3
    assert aws.instance_ids(orders.cloudmap_service_ids[0]) == {orders.task_arns[1].rsplit("/", 1)[-1]}
    assert wiring.poller_deps().ecs_budget._penalty_until > 0


def test_poller_isolates_a_failing_cloudmap_service_and_finishes_the_pass(
    aws: FleetBuilder, orders: SeededService, lambda_context: FakeLambdaContext, read_output: Any, mocker: Any
) -> None:
    """ListInstances fails for one service: its reconciliation is skipped, everything else is done."""
    from cloudmap_reactor.handlers import health_poller
    from tests.conftest import load_event

    payments = aws.create_service("prod", "payments", discovery_names=["payments"])
    aws.start_tasks(payments, 2)
    aws.ecs.stop_task(cluster=payments.cluster_arn, task=payments.task_arns[0], reason="missed stop event")
    aws.set_health(orders.task_arns[0], "HEALTHY")
    aws.set_health(orders.task_arns[1], "HEALTHY")
    aws.set_health(payments.task_arns[1], "HEALTHY")
    broken = orders.cloudmap_service_ids[0]
    real = ServiceDiscoveryBackend.list_instances

    def list_instances(self: Any, service_id: str) -> Any:
        if service_id == broken:
            raise ServiceUnavailable
        return real(self, service_id)

    mocker.patch.object(ServiceDiscoveryBackend, "list_instances", list_instances)

    result = health_poller.lambda_handler(load_event("scheduled-poll.json"), lambda_context)

    assert result["status"] == "completed"
    assert aws.instance_ids(payments.cloudmap_service_ids[0]) == {payments.task_arns[1].rsplit("/", 1)[-1]}
    output = read_output()
    assert output.metrics.value("TasksDeregistered", Reason="Reconciled") == 1
    assert output.metrics.value("HealthScanCompleted") == 1
    failure = next(r for r in output.logs if r["message"].startswith("Could not reconcile"))
    assert failure["ecs_service"] == "orders"


def test_no_heartbeat_for_a_pass_that_could_not_read_cloud_map(
    aws: FleetBuilder, orders: SeededService, lambda_context: FakeLambdaContext, read_output: Any, mocker: Any
) -> None:
    """ListInstances denied everywhere: the pass checked nothing that Cloud Map holds, so no 'pass done'."""
    from botocore.awsrequest import AWSResponse, HTTPHeaders

    from cloudmap_reactor.adapters.clients import cloudmap_client
    from cloudmap_reactor.handlers import health_poller
    from tests.conftest import load_event

    def denied(**_: Any) -> tuple[AWSResponse, dict[str, Any]]:  # as IAM answers, for the function's client only
        error = {"Code": "AccessDeniedException", "Message": "not authorized to perform servicediscovery:ListInstances"}
        return AWSResponse("https://servicediscovery", 400, HTTPHeaders(), None), {
            "Error": error,
            "ResponseMetadata": {"HTTPStatusCode": 400},
        }

    hook: Any = denied  # a before-call handler that answers instead of AWS
    cloudmap_client().meta.events.register("before-call.servicediscovery.ListInstances", hook)
    aws.set_health(orders.task_arns[0], "UNHEALTHY")

    health_poller.lambda_handler(load_event("scheduled-poll.json"), lambda_context)

    output = read_output()
    assert output.metrics.value("HealthScanCompleted") == 0
    assert len(aws.instance_ids(orders.cloudmap_service_ids[0])) == 2  # the guard could not count: nothing left
    assert "Health scan pass incomplete" in output.messages("INFO")
