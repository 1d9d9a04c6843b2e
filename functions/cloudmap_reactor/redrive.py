"""Replay the reactor's dead letters through the deployed function, deleting each one it handled.

Both dead-letter paths of template.yaml leave the original EventBridge event as the message body:
EventBridge (it could not invoke the function) adds the attributes RULE_ARN, TARGET_ARN,
ERROR_CODE and ERROR_MESSAGE; Lambda (the function kept failing the event) adds RequestID,
ErrorCode and ErrorMessage. So every message is replayed the same way: its body, unchanged, is the
payload of a synchronous Invoke of TaskStateReactorFunction. Replaying is safe because the reactor
is idempotent (an instance that is already gone is no error).

A message is deleted only after its invocation succeeded. Failed messages, bodies that are not a
JSON object and everything a dry run looked at stay in the queue: they are made visible again
when the run ends, so the queue holds exactly what still needs attention.

Unlike doctor and plan, this writes (SQS DeleteMessage and ChangeMessageVisibility, Lambda
Invoke), so its clients are plain ones, not the read-only clients of ``cli``. The command line
(``cloudmap-reactor redrive``) is in ``cli``:

    cloudmap-reactor redrive --stack-name cloudmap-reactor [--region R] [--profile P]
        [--max-messages N] [--visibility-timeout S] [--dry-run]
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from botocore.config import Config
from botocore.exceptions import ClientError

if TYPE_CHECKING:
    from mypy_boto3_cloudformation import CloudFormationClient
    from mypy_boto3_lambda import LambdaClient
    from mypy_boto3_sqs import SQSClient

QUEUE_URL_OUTPUT = "DeadLetterQueueUrl"
FUNCTION_OUTPUT = "TaskStateReactorFunctionArn"
BATCH_SIZE = 10  # SQS's maximum for ReceiveMessage and the *Batch calls
WAIT_SECONDS = 2  # long polling asks every SQS server, so an empty answer means an empty queue
# Messages stay hidden from other consumers (and from this run) while they are being replayed. It
# must outlast one invocation (the function times out after 30 s) plus the delete after it.
DEFAULT_VISIBILITY_TIMEOUT = 300
MIN_VISIBILITY_TIMEOUT = 60
# A synchronous invocation answers after at most the function's 30 s timeout (botocore: 60 s). A
# retried timeout invokes the function again, which is harmless for the idempotent reactor.
LAMBDA_CONFIG = Config(read_timeout=90, connect_timeout=10, retries={"mode": "standard", "max_attempts": 3})
# Why a message was dead-lettered: EventBridge's attribute names, then Lambda's.
_REASON_ATTRIBUTES = ("ERROR_CODE", "ERROR_MESSAGE", "ErrorCode", "ErrorMessage")


@dataclass(frozen=True)
class Message:
    """A received dead letter: only what the redrive needs of an SQS message."""

    message_id: str
    receipt_handle: str
    body: str
    attributes: Mapping[str, str] = field(default_factory=dict)  # message attributes with a string value


@dataclass(frozen=True)
class DeadEvent:
    """A dead letter whose body is a JSON object: the event to replay, and the body to send unchanged."""

    message_id: str
    event: dict[str, Any]
    body: str


class DeadLetterQueue(Protocol):
    """The queue as the redrive sees it, so the replay logic runs against any implementation."""

    def receive(self, max_messages: int) -> list[Message]:
        """Up to ``max_messages`` (at most 10) messages, hidden from other receivers until released."""
        ...

    def delete(self, messages: Sequence[Message]) -> dict[str, str]:
        """Delete the messages; returns message id -> error for those that could not be deleted."""
        ...

    def release(self, messages: Sequence[Message]) -> dict[str, str]:
        """Make the messages visible again at once; returns message id -> error for those that stay hidden."""
        ...


# Replays one dead event; raises when the reactor did not handle it.
Deliver = Callable[[DeadEvent], None]


class DeliveryFailed(RuntimeError):
    """The function ran but failed the event (the invocation answered with a FunctionError)."""


class SetupError(RuntimeError):
    """The queue or the function to redrive cannot be found."""


@dataclass
class Summary:
    """What one run did, message id -> description (or the reason it was not replayed)."""

    replayed: dict[str, str] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    would_replay: dict[str, str] = field(default_factory=dict)

    @property
    def handled(self) -> int:
        return len(self.replayed) + len(self.failed) + len(self.skipped) + len(self.would_replay)

    def line(self, *, dry_run: bool) -> str:
        if dry_run:
            return (
                f"Dry run: would replay {len(self.would_replay)}, skipped {len(self.skipped)}; "
                "nothing was invoked or deleted."
            )
        return f"Replayed {len(self.replayed)}, failed {len(self.failed)}, skipped {len(self.skipped)}."


def redrive(
    queue: DeadLetterQueue,
    deliver: Deliver,
    *,
    max_messages: int | None = None,
    dry_run: bool = False,
    report: Callable[[str], None] = print,
) -> Summary:
    """Replay the queue's messages through ``deliver``; delete those it handled, release the others.

    The run ends when the queue has no message it has not seen yet (or after ``max_messages``).
    A message seen again (its visibility timeout ran out during a long run) is not replayed twice.
    """
    summary = Summary()
    seen: set[str] = set()
    held: dict[str, Message] = {}  # received and not deleted: released when the run ends
    try:
        while max_messages is None or summary.handled < max_messages:
            wanted = BATCH_SIZE if max_messages is None else min(BATCH_SIZE, max_messages - summary.handled)
            batch = queue.receive(wanted)
            fresh = {m.message_id: m for m in batch if m.message_id not in seen}
            seen.update(fresh)
            held.update({m.message_id: m for m in batch})  # the newest receipt handle is the valid one
            if not fresh:
                break
            _replay_batch(list(fresh.values()), queue, deliver, summary, held, dry_run=dry_run, report=report)
    finally:
        _release(queue, list(held.values()), report)
    return summary


def _replay_batch(
    batch: list[Message],
    queue: DeadLetterQueue,
    deliver: Deliver,
    summary: Summary,
    held: dict[str, Message],
    *,
    dry_run: bool,
    report: Callable[[str], None],
) -> None:
    """Replay one received batch, then delete what was replayed in one batched call.

    Each invocation takes well under a second unless the function times out (30 s), so the batch
    is done long before the visibility timeout; were it not, a message replayed twice is harmless.
    """
    replayed: list[Message] = []
    try:
        for message in batch:
            if _replay_one(message, deliver, summary, dry_run=dry_run, report=report):
                replayed.append(message)
    finally:
        # Also on Ctrl-C: what was replayed must not be replayed again by the next run.
        not_deleted = queue.delete(replayed) if replayed else {}
        for message in replayed:
            if message.message_id in not_deleted:
                error = not_deleted[message.message_id]
                summary.failed[message.message_id] = f"replayed, but not deleted: {error}"
                del summary.replayed[message.message_id]
                report(f"FAILED   {message.message_id}  replayed, but not deleted ({error})")
            else:
                held.pop(message.message_id, None)


def _replay_one(
    message: Message, deliver: Deliver, summary: Summary, *, dry_run: bool, report: Callable[[str], None]
) -> bool:
    """True when the message was replayed successfully and may be deleted."""
    try:
        event = json.loads(message.body)
    except ValueError:
        event = None
    if not isinstance(event, dict):
        reason = f"body is not a JSON object: {_shorten(message.body)}"
        summary.skipped[message.message_id] = reason
        report(f"skipped  {message.message_id}  {reason}")
        return False

    description = _describe(event)
    if dry_run:
        summary.would_replay[message.message_id] = description
        report(f"would replay {message.message_id}  {description}{_dead_letter_reason(message)}")
        return False
    try:
        deliver(DeadEvent(message_id=message.message_id, event=event, body=message.body))
    except Exception as exc:  # any failure leaves the message for the next run
        summary.failed[message.message_id] = f"{description}: {type(exc).__name__}: {exc}"
        report(f"FAILED   {message.message_id}  {summary.failed[message.message_id]}")
        return False
    summary.replayed[message.message_id] = description
    report(f"replayed {message.message_id}  {description}")
    return True


def _release(queue: DeadLetterQueue, messages: list[Message], report: Callable[[str], None]) -> None:
    if not messages:
        return
    hidden = queue.release(messages)
    if hidden:
        report(f"{len(hidden)} message(s) could not be released; they reappear when their visibility timeout ends")


def _describe(event: Mapping[str, Any]) -> str:
    """One line naming the event: detail type, task and event id (the fields may be anything)."""
    detail = event.get("detail")
    task = detail.get("taskArn") if isinstance(detail, dict) else None
    if task is None and isinstance(event.get("resources"), list) and event["resources"]:
        task = event["resources"][0]
    return f"{event.get('detail-type', '?')} {task or '?'} (event {event.get('id', '?')})"


def _dead_letter_reason(message: Message) -> str:
    reasons = [f"{name}={message.attributes[name]}" for name in _REASON_ATTRIBUTES if name in message.attributes]
    return f"  [dead-lettered: {', '.join(reasons)}]" if reasons else ""


def _shorten(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else f"{text[:limit]}…"


def _chunks(messages: Sequence[Message]) -> Iterator[Sequence[Message]]:
    for start in range(0, len(messages), BATCH_SIZE):
        yield messages[start : start + BATCH_SIZE]


class SqsDeadLetterQueue:
    """The dead-letter queue through the SQS API: long-polled receives, batched deletes and releases."""

    def __init__(
        self,
        client: SQSClient,
        queue_url: str,
        *,
        visibility_timeout: int = DEFAULT_VISIBILITY_TIMEOUT,
        wait_seconds: int = WAIT_SECONDS,
    ) -> None:
        self._client = client
        self.queue_url = queue_url
        self._visibility_timeout = visibility_timeout
        self._wait_seconds = wait_seconds

    def receive(self, max_messages: int) -> list[Message]:
        response = self._client.receive_message(
            QueueUrl=self.queue_url,
            MaxNumberOfMessages=max_messages,
            WaitTimeSeconds=self._wait_seconds,
            VisibilityTimeout=self._visibility_timeout,
            MessageAttributeNames=["All"],
        )
        return [
            Message(
                message_id=m["MessageId"],
                receipt_handle=m["ReceiptHandle"],
                body=m["Body"],
                attributes={
                    name: value["StringValue"]
                    for name, value in m.get("MessageAttributes", {}).items()
                    if "StringValue" in value
                },
            )
            for m in response.get("Messages", [])
        ]

    def delete(self, messages: Sequence[Message]) -> dict[str, str]:
        failures: dict[str, str] = {}
        for chunk in _chunks(messages):
            response = self._client.delete_message_batch(
                QueueUrl=self.queue_url,
                Entries=[{"Id": str(i), "ReceiptHandle": m.receipt_handle} for i, m in enumerate(chunk)],
            )
            for failed in response.get("Failed", []):
                failures[chunk[int(failed["Id"])].message_id] = f"{failed['Code']}: {failed.get('Message', '')}"
        return failures

    def release(self, messages: Sequence[Message]) -> dict[str, str]:
        failures: dict[str, str] = {}
        for chunk in _chunks(messages):
            response = self._client.change_message_visibility_batch(
                QueueUrl=self.queue_url,
                Entries=[
                    {"Id": str(i), "ReceiptHandle": m.receipt_handle, "VisibilityTimeout": 0}
                    for i, m in enumerate(chunk)
                ],
            )
            for failed in response.get("Failed", []):
                failures[chunk[int(failed["Id"])].message_id] = f"{failed['Code']}: {failed.get('Message', '')}"
        return failures


class LambdaDelivery:
    """Invoke the function synchronously with the dead letter's body, so the outcome is known at once."""

    def __init__(self, client: LambdaClient, function_name: str) -> None:
        self._client = client
        self.function_name = function_name

    def __call__(self, dead: DeadEvent) -> None:
        response = self._client.invoke(
            FunctionName=self.function_name,
            InvocationType="RequestResponse",
            Payload=dead.body.encode(),
        )
        payload = response["Payload"].read()
        if "FunctionError" in response:
            raise DeliveryFailed(_function_error(response["FunctionError"], payload))


def _function_error(kind: str, payload: bytes) -> str:
    """Lambda's error payload ({"errorType", "errorMessage", ...}) as one line."""
    try:
        error = json.loads(payload)
    except ValueError:
        error = None
    if isinstance(error, dict) and "errorMessage" in error:
        return f"function error ({kind}): {error.get('errorType', 'Error')}: {error['errorMessage']}"
    return f"function error ({kind}): {_shorten(payload.decode(errors='replace'), 300)}"


def stack_outputs(client: CloudFormationClient, stack_name: str) -> dict[str, str]:
    """The stack's outputs by key."""
    try:
        stacks = client.describe_stacks(StackName=stack_name)["Stacks"]
    except ClientError as exc:
        raise SetupError(f"cannot describe stack {stack_name}: {exc}") from exc
    if not stacks:
        raise SetupError(f"stack {stack_name} not found")
    return {
        o["OutputKey"]: o["OutputValue"]
        for o in stacks[0].get("Outputs", [])
        if "OutputKey" in o and "OutputValue" in o
    }


def resolve_target(
    client: CloudFormationClient,
    *,
    stack_name: str | None,
    queue_url: str | None = None,
    function_name: str | None = None,
) -> tuple[str, str]:
    """(queue URL, function name or ARN): given values win; the rest comes from the stack's outputs."""
    if queue_url and function_name:
        return queue_url, function_name
    if not stack_name:
        raise SetupError("give --stack-name, or both --queue-url and --function-name")
    outputs = stack_outputs(client, stack_name)
    found_queue = queue_url or outputs.get(QUEUE_URL_OUTPUT)
    found_function = function_name or outputs.get(FUNCTION_OUTPUT)
    if not found_queue or not found_function:
        missing = [QUEUE_URL_OUTPUT] * (not found_queue) + [FUNCTION_OUTPUT] * (not found_function)
        raise SetupError(f"stack {stack_name} has no output {' or '.join(missing)}")
    return found_queue, found_function
