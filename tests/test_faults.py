"""AWS faults: botocore retries them (adaptive mode), then the handler raises so nothing is lost.

Faults, each a real new attempt through botocore's retry machinery, on virtual time
(``tests/virtual_time.py``: back-offs and the adaptive token bucket take no real time):

* a 503 ``ServiceUnavailableException`` answered by the local emulator itself,
* a read timeout raised before the request reaches the emulator, and
* a ``ThrottlingException`` answered by the emulator, for longer than botocore retries.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from botocore.exceptions import ReadTimeoutError
from moto.core.exceptions import JsonRESTError
from moto.servicediscovery.models import ServiceDiscoveryBackend

from cloudmap_reactor.adapters.clients import TOTAL_MAX_ATTEMPTS, cloudmap_client, ecs_client
from cloudmap_reactor.adapters.deadline import DeadlineExceeded
from cloudmap_reactor.handlers import task_state_change
from devtools.aws_emulator import FleetBuilder, SeededService
from devtools.local_lambda import FakeLambdaContext
from tests import virtual_time
from tests.conftest import task_event
from tests.virtual_time import VirtualTime


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


pytestmark = pytest.mark.usefixtures("clock")  # every test here runs on virtual time (conftest)


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


def throttled(mocker: Any, backend: Any, method: str, failures: int) -> Faults:
    """The emulator answers ``ThrottlingException`` to the first ``failures`` calls of ``backend.method``."""
    faults = Faults(failures)
    real = getattr(backend, method)

    def call(self: Any, *args: Any, **kwargs: Any) -> Any:
        if faults.should_fail():
            raise Throttled
        return real(self, *args, **kwargs)

    mocker.patch.object(backend, method, call)
    return faults


def test_poller_throttled_beyond_botocore_retries_fails_that_clusters_read_for_the_pass(
    aws: FleetBuilder,
    orders: SeededService,
    lambda_context: FakeLambdaContext,
    read_output: Any,
    clock: VirtualTime,
    mocker: Any,
) -> None:
    """One retry layer: botocore's attempts, then the read fails; nothing walks the cluster again."""
    from moto.ecs.models import EC2ContainerServiceBackend

    from cloudmap_reactor import wiring
    from cloudmap_reactor.handlers import health_poller
    from tests.conftest import load_event

    aws.set_health(orders.task_arns[0], "UNHEALTHY")
    faults = throttled(mocker, EC2ContainerServiceBackend, "describe_tasks", 1000)

    with pytest.raises(health_poller.HealthScanIncomplete, match=orders.cluster_arn):
        health_poller.lambda_handler(load_event("scheduled-poll.json"), lambda_context)

    # one DescribeTasks call: botocore's attempts (fewer if a back-off would pass the read deadline), no adapter retry
    assert 2 <= faults.attempts <= TOTAL_MAX_ATTEMPTS
    assert sum(clock.slept) <= 1 + 2 + 4 + 8 + 16  # botocore's back-offs only (no adapter back-off)
    assert aws.instance_ids(orders.cloudmap_service_ids[0]) == set(map(task_id, orders.task_arns))
    assert wiring.poller_deps().ecs_budget._penalty_until > 0
    failure = next(r for r in read_output().logs if r["message"] == "Could not scan cluster")
    assert failure["cluster_arn"] == orders.cluster_arn
    assert "DescribeTasks" in failure["error"]
    assert "ThrottlingException" in failure["error"]


def test_reactor_throttled_by_ecs_gives_up_before_its_timeout_and_counts_an_error(
    aws: FleetBuilder,
    orders: SeededService,
    lambda_context: FakeLambdaContext,
    read_output: Any,
    clock: VirtualTime,
    mocker: Any,
) -> None:
    """Slow, throttled DescribeServices: the deadline (timeout - margin) ends it, the event goes to the DLQ."""
    from moto.ecs.models import EC2ContainerServiceBackend

    lambda_context.remaining_ms = 30_000
    deadline = clock.now + 30 - task_state_change.DEADLINE_MARGIN_SECONDS
    faults = throttled(mocker, EC2ContainerServiceBackend, "describe_services", 1000)
    timeouts = virtual_time.slow_answers(ecs_client(), clock, 5.0)  # the 6th attempt could only start at 25 s

    with pytest.raises(task_state_change.DeregistrationFailed, match="DescribeServices") as raised:
        stop(orders, lambda_context)

    assert isinstance(raised.value.__cause__, DeadlineExceeded)
    assert clock.now <= deadline
    assert faults.attempts < TOTAL_MAX_ATTEMPTS
    assert all(t <= 10 for t in timeouts)
    assert len(aws.instance_ids(orders.cloudmap_service_ids[0])) == 2
    output = read_output()
    assert output.metrics.value("DeregistrationErrors") == 1
    assert "Could not look up the task's ECS service; nothing deregistered" in output.messages("ERROR")


def test_reactor_throttled_by_cloudmap_gives_up_before_its_timeout_and_counts_each_failure(
    aws: FleetBuilder, lambda_context: FakeLambdaContext, read_output: Any, clock: VirtualTime, mocker: Any
) -> None:
    """Every DeregisterInstance throttled and slow: each ends as FAILED by the deadline, none is left out."""
    aws.create_cluster("prod")
    orders = aws.create_service("prod", "orders", discovery_names=["orders", "orders-grpc", "orders-admin"])
    aws.start_tasks(orders, 2)
    lambda_context.remaining_ms = 30_000
    deadline = clock.now + 30 - task_state_change.DEADLINE_MARGIN_SECONDS
    faults = throttled(mocker, ServiceDiscoveryBackend, "deregister_instance", 1000)
    virtual_time.slow_answers(cloudmap_client(), clock, 3.0)

    with pytest.raises(task_state_change.DeregistrationFailed, match="3 deregistration"):
        stop(orders, lambda_context)

    assert clock.now <= deadline
    assert faults.attempts < 3 * TOTAL_MAX_ATTEMPTS
    for service_id in orders.cloudmap_service_ids:
        assert len(aws.instance_ids(service_id)) == 2
    output = read_output()
    assert output.metrics.value("DeregistrationErrors") == 3
    failures = [r for r in output.logs if r["message"] == "Failed to deregister task from Cloud Map"]
    assert any("deadline" in r["error"] for r in failures)


def task_id(task_arn: str) -> str:
    return task_arn.rsplit("/", 1)[-1]


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


def test_a_hung_and_throttled_cluster_is_skipped_within_the_pass_bound_and_the_others_are_acted_on(
    aws: FleetBuilder, lambda_context: FakeLambdaContext, read_output: Any, clock: VirtualTime, mocker: Any
) -> None:
    """Issue: one throttled or hung cluster used to block every cluster behind it (~96 attempts, ~510 s)."""
    from moto.ecs.models import EC2ContainerServiceBackend

    from cloudmap_reactor.adapters.clients import ecs_client
    from cloudmap_reactor.handlers import health_poller
    from tests.conftest import load_event

    aws.create_cluster("prod")
    prod = aws.create_service("prod", "orders", discovery_names=["orders"])
    for arn, health in zip(aws.start_tasks(prod, 4), ["UNHEALTHY", "HEALTHY", "HEALTHY", "HEALTHY"], strict=True):
        aws.set_health(arn, health)
    aws.create_cluster("slow")
    slow = aws.create_service("slow", "search", discovery_names=["search"])
    aws.start_tasks(slow, 2)
    real = EC2ContainerServiceBackend.describe_tasks

    def describe_tasks(self: Any, cluster_str: str, tasks: Any, *args: Any, **kwargs: Any) -> Any:
        if cluster_str.endswith("/slow") or cluster_str == "slow":
            raise Throttled  # for ever
        return real(self, cluster_str, tasks, *args, **kwargs)

    mocker.patch.object(EC2ContainerServiceBackend, "describe_tasks", describe_tasks)
    virtual_time.slow_answers(ecs_client(), clock, 1.0)  # and every ECS answer takes a second
    lambda_context.remaining_ms = 60_000
    started = clock.now

    with pytest.raises(health_poller.HealthScanIncomplete, match="cluster/slow"):
        health_poller.lambda_handler(load_event("scheduled-poll.json"), lambda_context)

    assert clock.now - started <= 60 - 2  # no AWS call past the deadline (2 s before the timeout)
    # the slow cluster's reads end early enough (a quarter of the pass, at most 5 s, is kept) to act
    assert aws.instance_ids(prod.cloudmap_service_ids[0]) == set(map(task_id, prod.task_arns[1:]))
    output = read_output()
    skipped = [r for r in output.logs if r["message"] == "Could not scan cluster"]
    # one virtual clock for every thread: whether botocore's last back-off or the deadline ends it varies,
    # and the slow cluster's throttling halves the shared read budget, so prod's first pass may run out
    # of time too (never for another reason) before a later pass acts on it (asserted above)
    slow_skips = [r for r in skipped if r["cluster_arn"].endswith("/slow")]
    assert len(slow_skips) == 1
    assert slow_skips[0]["reason"] in ("Deadline", "Throttled", "Error")
    assert all(r["reason"] == "Deadline" for r in skipped if not r["cluster_arn"].endswith("/slow"))
    for reason in {r["reason"] for r in skipped}:
        assert output.metrics.value("ClusterSkipped", Reason=reason) == sum(1 for r in skipped if r["reason"] == reason)
    assert output.metrics.value("TasksDeregistered", Reason="Unhealthy") == 1
    assert output.metrics.value("HealthScanCompleted") == 0


def test_describe_tasks_answering_only_failures_is_a_failed_read_not_an_empty_cluster(
    aws: FleetBuilder, orders: SeededService, lambda_context: FakeLambdaContext, read_output: Any, mocker: Any
) -> None:
    """No heartbeat for a pass that read nothing: DescribeTasks answered 200 with every task in ``failures``."""
    import json

    from cloudmap_reactor.handlers import health_poller
    from tests.conftest import load_event

    def only_failures(self: Any) -> str:  # the shape of DescribeTasks' answer, every task a failure
        return json.dumps(
            {"tasks": [], "failures": [{"arn": t, "reason": "ACCESS_DENIED"} for t in self._get_param("tasks")]}
        )

    mocker.patch("moto.ecs.responses.EC2ContainerServiceResponse.describe_tasks", only_failures)

    with pytest.raises(health_poller.HealthScanIncomplete):
        health_poller.lambda_handler(load_event("scheduled-poll.json"), lambda_context)

    output = read_output()
    assert output.metrics.value("HealthScanCompleted") == 0
    skipped = next(r for r in output.logs if r["message"] == "Could not scan cluster")
    assert "described 0 of 2 tasks: ['ACCESS_DENIED']" in skipped["error"]
