"""The DLQ redrive against the local emulator's SQS, Cloud Map and CloudFormation.

moto cannot run a Lambda function without Docker, so most tests deliver in-process to the real
handler; what the deployed path adds (a synchronous Invoke, FunctionError) is tested with a
botocore Stubber. Assertions are on what is left in the queue and in Cloud Map afterwards.
"""

from __future__ import annotations

import io
import json
from typing import TYPE_CHECKING, Any

import boto3
import pytest
from botocore.client import BaseClient
from botocore.response import StreamingBody
from botocore.stub import Stubber
from moto.core.exceptions import JsonRESTError
from moto.servicediscovery.models import ServiceDiscoveryBackend

from cloudmap_reactor import cli, redrive
from cloudmap_reactor.handlers import task_state_change
from cloudmap_reactor.redrive import (
    DeadEvent,
    Deliver,
    DeliveryFailed,
    LambdaDelivery,
    SetupError,
    SqsDeadLetterQueue,
)
from devtools.aws_emulator import FleetBuilder, SeededService
from devtools.local_lambda import FakeLambdaContext
from tests.conftest import task_event, task_ids

if TYPE_CHECKING:
    from mypy_boto3_sqs import SQSClient

STACK = "cloudmap-reactor"
FUNCTION_ARN = "arn:aws:lambda:us-east-1:123456789012:function:cloudmap-reactor-TaskStateReactorFunction-AbC123"
RULE_ARN = "arn:aws:events:us-east-1:123456789012:rule/cloudmap-reactor-TaskStateReactorFunctionTaskStopping-XyZ"
# What each dead-letter path of template.yaml adds to the event it parks (the body is the event).
EVENTBRIDGE_ATTRIBUTES = {
    "RULE_ARN": RULE_ARN,
    "TARGET_ARN": FUNCTION_ARN,
    "ERROR_CODE": "THROTTLING",
    "ERROR_MESSAGE": "Rate exceeded.",
    "EXHAUSTED_RETRY_CONDITION": "MaximumRetryAttempts",
    "RETRY_ATTEMPTS": "10",
}
LAMBDA_ATTRIBUTES = {
    "RequestID": "0d5e6f70-1111-4222-8333-444455556666",
    "ErrorCode": "200",
    "ErrorMessage": "1 deregistration(s) failed",
}


class AccessDenied(JsonRESTError):
    def __init__(self) -> None:
        super().__init__("AccessDeniedException", "not authorized to perform servicediscovery:DeregisterInstance")


@pytest.fixture(autouse=True)
def no_long_polling(mocker: Any) -> None:
    """moto really waits on an empty queue; the command's 2 s long poll would only slow the tests."""
    mocker.patch.object(redrive, "WAIT_SECONDS", 0)


@pytest.fixture
def orders(aws: FleetBuilder) -> SeededService:
    """Cluster ``prod``, service ``orders`` with two discovery names and 12 tasks (more than one batch)."""
    aws.create_cluster("prod")
    service = aws.create_service("prod", "orders", discovery_names=["orders", "orders-grpc"])
    aws.start_tasks(service, 12)
    return service


@pytest.fixture
def sqs(aws: FleetBuilder) -> SQSClient:
    return boto3.client("sqs")


@pytest.fixture
def queue_url(sqs: SQSClient) -> str:
    """The dead-letter queue as template.yaml declares it."""
    return sqs.create_queue(
        QueueName="cloudmap-reactor-DeadLetterQueue",
        Attributes={"MessageRetentionPeriod": "1209600", "SqsManagedSseEnabled": "true"},
    )["QueueUrl"]


@pytest.fixture
def queue(sqs: SQSClient, queue_url: str) -> SqsDeadLetterQueue:
    return SqsDeadLetterQueue(sqs, queue_url, wait_seconds=0)


@pytest.fixture
def in_process(lambda_context: FakeLambdaContext) -> Deliver:
    """Deliver to the real handler, as the function would run it; it raises when the event failed."""

    def deliver(dead: DeadEvent) -> None:
        task_state_change.lambda_handler(dead.event, lambda_context)

    return deliver


def dead_letter(sqs: SQSClient, queue_url: str, body: str, attributes: dict[str, str] | None = None) -> str:
    """Park a message the way EventBridge or Lambda does; returns its message id."""
    return sqs.send_message(
        QueueUrl=queue_url,
        MessageBody=body,
        MessageAttributes={
            name: {"DataType": "Number" if value.isdigit() else "String", "StringValue": value}
            for name, value in (attributes or {}).items()
        },
    )["MessageId"]


def dead_letter_stopping(sqs: SQSClient, queue_url: str, service: SeededService, task_arn: str, index: int = 0) -> str:
    """A task-stopping event, dead-lettered alternately by EventBridge and by Lambda."""
    event = task_event(task_arn, service.cluster_arn, group=f"service:{service.name}")
    return dead_letter(
        sqs, queue_url, json.dumps(event, indent=2), EVENTBRIDGE_ATTRIBUTES if index % 2 else LAMBDA_ATTRIBUTES
    )


def depth(sqs: SQSClient, queue_url: str) -> tuple[int, int]:
    """(visible, in flight) messages of the queue."""
    attributes = sqs.get_queue_attributes(
        QueueUrl=queue_url, AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
    )["Attributes"]
    return int(attributes["ApproximateNumberOfMessages"]), int(attributes["ApproximateNumberOfMessagesNotVisible"])


def bodies(sqs: SQSClient, queue_url: str) -> list[str]:
    """Every body left in the queue (received with visibility timeout 0, so nothing is hidden)."""
    response = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10, VisibilityTimeout=0)
    return sorted(m["Body"] for m in response.get("Messages", []))


def registered(aws: FleetBuilder, service: SeededService) -> list[set[str]]:
    return [aws.instance_ids(sid) for sid in service.cloudmap_service_ids]


def deny_deregistration(mocker: Any, task_arn: str) -> Any:
    """Cloud Map refuses to deregister one task's instances, as with a missing IAM permission."""
    real = ServiceDiscoveryBackend.deregister_instance
    denied = task_arn.rsplit("/", 1)[-1]

    def deregister_instance(self: Any, service_id: str, instance_id: str) -> Any:
        if instance_id == denied:
            raise AccessDenied
        return real(self, service_id, instance_id)

    return mocker.patch.object(ServiceDiscoveryBackend, "deregister_instance", deregister_instance)


# -- the redrive against SQS, delivering to the real handler ----------------------------------


def test_every_dead_letter_is_replayed_and_deleted(
    aws: FleetBuilder,
    orders: SeededService,
    sqs: SQSClient,
    queue_url: str,
    queue: SqsDeadLetterQueue,
    in_process: Deliver,
) -> None:
    leaving, staying = orders.task_arns[:11], orders.task_arns[11:]
    ids = [dead_letter_stopping(sqs, queue_url, orders, arn, i) for i, arn in enumerate(leaving)]
    reported: list[str] = []

    summary = redrive.redrive(queue, in_process, report=reported.append)

    assert registered(aws, orders) == [task_ids(*staying)] * 2
    assert depth(sqs, queue_url) == (0, 0)
    assert set(summary.replayed) == set(ids)
    assert not summary.failed
    assert not summary.skipped
    assert any(leaving[0] in line for line in reported)
    assert summary.line(dry_run=False) == "Replayed 11, failed 0, skipped 0."


def test_failed_delivery_stays_in_the_queue_until_a_later_run_succeeds(
    aws: FleetBuilder,
    orders: SeededService,
    sqs: SQSClient,
    queue_url: str,
    queue: SqsDeadLetterQueue,
    in_process: Deliver,
    mocker: Any,
) -> None:
    denied, other = orders.task_arns[:2]
    denied_id = dead_letter_stopping(sqs, queue_url, orders, denied)
    dead_letter_stopping(sqs, queue_url, orders, other, 1)
    denial = deny_deregistration(mocker, denied)

    summary = redrive.redrive(queue, in_process, report=lambda _: None)

    assert list(summary.failed) == [denied_id]
    assert "DeregistrationFailed: 2 deregistration(s) failed" in summary.failed[denied_id]
    assert len(summary.replayed) == 1
    assert depth(sqs, queue_url) == (1, 0)  # released at once, not hidden for the visibility timeout
    [left] = bodies(sqs, queue_url)
    assert json.loads(left)["detail"]["taskArn"] == denied
    assert all(task_ids(denied) <= instances for instances in registered(aws, orders))
    assert not any(task_ids(other) & instances for instances in registered(aws, orders))

    mocker.stop(denial)  # the permission is fixed: the next run handles the rest
    again = redrive.redrive(queue, in_process, report=lambda _: None)

    assert list(again.replayed) == [denied_id]
    assert depth(sqs, queue_url) == (0, 0)
    assert not any(task_ids(denied) & instances for instances in registered(aws, orders))


def test_body_that_is_not_a_json_object_is_reported_and_left(
    aws: FleetBuilder,
    orders: SeededService,
    sqs: SQSClient,
    queue_url: str,
    queue: SqsDeadLetterQueue,
    in_process: Deliver,
) -> None:
    junk = ["not json at all", "[1, 2, 3]", '"a string"']
    junk_ids = {dead_letter(sqs, queue_url, body, EVENTBRIDGE_ATTRIBUTES) for body in junk}
    dead_letter_stopping(sqs, queue_url, orders, orders.task_arns[0])
    reported: list[str] = []

    summary = redrive.redrive(queue, in_process, report=reported.append)

    assert set(summary.skipped) == junk_ids
    assert all("not a JSON object" in reason for reason in summary.skipped.values())
    assert len(summary.replayed) == 1
    assert not summary.failed
    assert bodies(sqs, queue_url) == sorted(junk)
    assert sum(line.startswith("skipped") for line in reported) == 3


def test_dry_run_lists_the_events_and_changes_nothing(
    aws: FleetBuilder, orders: SeededService, sqs: SQSClient, queue_url: str, queue: SqsDeadLetterQueue
) -> None:
    for i, arn in enumerate(orders.task_arns[:3]):
        dead_letter_stopping(sqs, queue_url, orders, arn, i)
    before = registered(aws, orders)
    reported: list[str] = []

    def must_not_deliver(dead: DeadEvent) -> None:
        pytest.fail(f"dry run delivered {dead.message_id}")

    summary = redrive.redrive(queue, must_not_deliver, dry_run=True, report=reported.append)

    assert len(summary.would_replay) == 3
    assert not summary.replayed
    assert registered(aws, orders) == before
    assert depth(sqs, queue_url) == (3, 0)
    would = [line for line in reported if line.startswith("would replay")]
    assert all(any(arn in line for line in would) for arn in orders.task_arns[:3])
    assert any("ERROR_CODE=THROTTLING" in line for line in would)
    assert any("ErrorMessage=1 deregistration(s) failed" in line for line in would)


def test_max_messages_replays_no_more(
    aws: FleetBuilder,
    orders: SeededService,
    sqs: SQSClient,
    queue_url: str,
    queue: SqsDeadLetterQueue,
    in_process: Deliver,
) -> None:
    for arn in orders.task_arns[:5]:
        dead_letter_stopping(sqs, queue_url, orders, arn)

    summary = redrive.redrive(queue, in_process, max_messages=3, report=lambda _: None)

    assert len(summary.replayed) == 3
    assert depth(sqs, queue_url) == (2, 0)


def test_a_message_seen_again_is_not_replayed_twice(orders: SeededService, sqs: SQSClient, queue_url: str) -> None:
    """Visibility timeout 0: failed messages come straight back, yet the run ends."""
    for arn in orders.task_arns[:2]:
        dead_letter_stopping(sqs, queue_url, orders, arn)
    attempts: list[str] = []

    def failing(dead: DeadEvent) -> None:
        attempts.append(dead.message_id)
        raise DeliveryFailed("still broken")

    summary = redrive.redrive(
        SqsDeadLetterQueue(sqs, queue_url, visibility_timeout=0, wait_seconds=0), failing, report=lambda _: None
    )

    assert sorted(attempts) == sorted(set(attempts))
    assert len(attempts) == 2
    assert len(summary.failed) == 2
    assert depth(sqs, queue_url) == (2, 0)


# -- the deployed path: a synchronous Invoke ---------------------------------------------------


def invoke_response(payload: dict[str, Any], function_error: str | None = None) -> dict[str, Any]:
    raw = json.dumps(payload).encode()
    response: dict[str, Any] = {"StatusCode": 200, "Payload": StreamingBody(io.BytesIO(raw), len(raw))}
    if function_error:
        response["FunctionError"] = function_error
    return response


def expected_invoke(body: str) -> dict[str, Any]:
    return {"FunctionName": FUNCTION_ARN, "InvocationType": "RequestResponse", "Payload": body.encode()}


def dead_event(body: str) -> DeadEvent:
    return DeadEvent(message_id="m-1", event=json.loads(body), body=body)


def test_lambda_delivery_sends_the_body_unchanged_and_synchronously() -> None:
    client = boto3.client("lambda")
    body = '{"id": "e-1",\n "detail-type": "ECS Task State Change", "detail": {}}'
    with Stubber(client) as stub:
        stub.add_response("invoke", invoke_response({"status": "processed", "outcomes": {}}), expected_invoke(body))

        LambdaDelivery(client, FUNCTION_ARN)(dead_event(body))

        stub.assert_no_pending_responses()


def test_lambda_delivery_raises_on_a_function_error() -> None:
    client = boto3.client("lambda")
    body = '{"id": "e-2"}'
    error = {"errorType": "DeregistrationFailed", "errorMessage": "1 deregistration(s) failed for task/prod/abc"}
    with Stubber(client) as stub:
        stub.add_response("invoke", invoke_response(error, "Unhandled"), expected_invoke(body))

        with pytest.raises(DeliveryFailed, match=r"Unhandled.*DeregistrationFailed: 1 deregistration\(s\) failed"):
            LambdaDelivery(client, FUNCTION_ARN)(dead_event(body))


def test_redrive_through_lambda_deletes_only_what_the_function_handled(
    orders: SeededService, sqs: SQSClient, queue_url: str, queue: SqsDeadLetterQueue
) -> None:
    ok_id = dead_letter_stopping(sqs, queue_url, orders, orders.task_arns[0])
    bad_id = dead_letter_stopping(sqs, queue_url, orders, orders.task_arns[1])
    throttled_id = dead_letter_stopping(sqs, queue_url, orders, orders.task_arns[2])
    outcome = {
        ok_id: invoke_response({"status": "processed"}),
        bad_id: invoke_response({"errorType": "DeregistrationFailed", "errorMessage": "boom"}, "Unhandled"),
    }
    client = boto3.client("lambda")
    delivery = LambdaDelivery(client, FUNCTION_ARN)
    with Stubber(client) as stub:

        def deliver(dead: DeadEvent) -> None:
            if dead.message_id in outcome:
                stub.add_response("invoke", outcome[dead.message_id], expected_invoke(dead.body))
            else:
                stub.add_client_error("invoke", "TooManyRequestsException", http_status_code=400)
            delivery(dead)

        summary = redrive.redrive(queue, deliver, report=lambda _: None)

    assert list(summary.replayed) == [ok_id]
    assert set(summary.failed) == {bad_id, throttled_id}
    assert "DeregistrationFailed: boom" in summary.failed[bad_id]
    assert "TooManyRequestsException" in summary.failed[throttled_id]
    assert depth(sqs, queue_url) == (2, 0)


# -- finding the queue and the function --------------------------------------------------------


def deploy_stack() -> str:
    """A stack with the dead-letter queue and the two outputs the redrive reads; returns the queue's URL."""
    template = {
        "Resources": {"DeadLetterQueue": {"Type": "AWS::SQS::Queue", "Properties": {"SqsManagedSseEnabled": True}}},
        "Outputs": {
            "DeadLetterQueueUrl": {"Value": {"Ref": "DeadLetterQueue"}},
            "TaskStateReactorFunctionArn": {"Value": FUNCTION_ARN},
        },
    }
    boto3.client("cloudformation").create_stack(StackName=STACK, TemplateBody=json.dumps(template))
    [url] = boto3.client("sqs").list_queues(QueueNamePrefix=f"{STACK}-DeadLetterQueue")["QueueUrls"]
    return url


def test_queue_and_function_come_from_the_stack_outputs(aws: FleetBuilder) -> None:
    stack_queue = deploy_stack()

    assert redrive.resolve_target(boto3.client("cloudformation"), stack_name=STACK) == (stack_queue, FUNCTION_ARN)
    assert redrive.resolve_target(boto3.client("cloudformation"), stack_name=STACK, function_name="my-function") == (
        stack_queue,
        "my-function",
    )


def test_given_queue_and_function_need_no_stack() -> None:
    cloudformation = boto3.client("cloudformation")
    with Stubber(cloudformation):  # any call would fail: nothing is stubbed
        assert redrive.resolve_target(cloudformation, stack_name=None, queue_url="https://q", function_name="f") == (
            "https://q",
            "f",
        )


def test_missing_stack_or_output_is_a_setup_error(aws: FleetBuilder) -> None:
    cloudformation = boto3.client("cloudformation")
    with pytest.raises(SetupError, match="cannot describe stack"):
        redrive.resolve_target(cloudformation, stack_name="no-such-stack")
    with pytest.raises(SetupError, match="--stack-name"):
        redrive.resolve_target(cloudformation, stack_name=None, queue_url="https://q")

    template = {
        "Resources": {"Q": {"Type": "AWS::SQS::Queue"}},
        "Outputs": {"DeadLetterQueueUrl": {"Value": {"Ref": "Q"}}},
    }
    cloudformation.create_stack(StackName="partial", TemplateBody=json.dumps(template))
    with pytest.raises(SetupError, match="no output TaskStateReactorFunctionArn"):
        redrive.resolve_target(cloudformation, stack_name="partial")


# -- the command line: cloudmap-reactor redrive ---------------------------------------------


@pytest.fixture
def invoked_in_process(mocker: Any, lambda_context: FakeLambdaContext) -> Any:
    """The CLI's Lambda delivery, running the handler in-process instead of invoking the function."""

    def call(self: LambdaDelivery, dead: DeadEvent) -> None:
        assert self.function_name == FUNCTION_ARN
        task_state_change.lambda_handler(json.loads(dead.body), lambda_context)

    return mocker.patch.object(LambdaDelivery, "__call__", autospec=True, side_effect=call)


def test_command_line_redrives_the_stacks_queue(
    aws: FleetBuilder,
    orders: SeededService,
    sqs: SQSClient,
    invoked_in_process: Any,
    mocker: Any,
    capsys: pytest.CaptureFixture[str],
) -> None:
    stack_queue = deploy_stack()
    for arn in orders.task_arns[:2]:
        dead_letter_stopping(sqs, stack_queue, orders, arn)
    calls = mocker.spy(BaseClient, "_make_api_call")

    dry = cli.main(["redrive", "--stack-name", STACK, "--region", "us-east-1", "--dry-run"])
    dry_out = capsys.readouterr().out

    assert dry == 0
    assert invoked_in_process.call_count == 0
    assert "Dry run: would replay 2, skipped 0" in dry_out
    assert depth(sqs, stack_queue) == (2, 0)
    assert "DeleteMessageBatch" not in {call.args[1] for call in calls.call_args_list}
    calls.reset_mock()

    code = cli.main(["redrive", "--stack-name", STACK, "--region", "us-east-1"])

    assert code == 0
    assert invoked_in_process.call_count == 2
    # Unlike doctor and plan, redrive's clients may write: the read-only guard is not on them.
    assert "DeleteMessageBatch" in {call.args[1] for call in calls.call_args_list}
    assert "Replayed 2, failed 0, skipped 0." in capsys.readouterr().out
    assert depth(sqs, stack_queue) == (0, 0)
    assert registered(aws, orders) == [task_ids(*orders.task_arns[2:])] * 2


def test_command_line_exits_non_zero_when_a_message_failed(
    aws: FleetBuilder,
    orders: SeededService,
    sqs: SQSClient,
    queue_url: str,
    invoked_in_process: Any,
    mocker: Any,
    capsys: pytest.CaptureFixture[str],
) -> None:
    dead_letter_stopping(sqs, queue_url, orders, orders.task_arns[0])
    deny_deregistration(mocker, orders.task_arns[0])

    code = cli.main(["redrive", "--queue-url", queue_url, "--function-name", FUNCTION_ARN, "--max-messages", "5"])

    out = capsys.readouterr().out
    assert code == 1
    assert "FAILED" in out
    assert "Replayed 0, failed 1, skipped 0." in out
    assert depth(sqs, queue_url) == (1, 0)


def test_command_line_without_a_stack_or_target_is_a_usage_error(
    aws: FleetBuilder, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["redrive", "--region", "us-east-1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cloudmap-reactor redrive: ")
    assert "--stack-name" in err
    with pytest.raises(SystemExit, match="2"):
        cli.main(["redrive", "--stack-name", STACK, "--max-messages", "0"])
    with pytest.raises(SystemExit, match="2"):  # shorter than one invocation of the function
        cli.main(["redrive", "--stack-name", STACK, "--visibility-timeout", "30"])


def test_redrive_has_its_own_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit, match="0"):
        cli.main(["redrive", "--help"])
    usage = capsys.readouterr().out
    assert usage.startswith("usage: cloudmap-reactor redrive ")
    for option in ("--stack-name", "--queue-url", "--function-name", "--max-messages", "--visibility-timeout"):
        assert option in usage
    assert "--dry-run" in usage
    assert "--cluster" not in usage  # doctor's and plan's options are theirs
