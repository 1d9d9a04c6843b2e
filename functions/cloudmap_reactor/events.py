"""The ECS task state change event, read through the Powertools EventBridge data class and validated.

Everything the reactor acts on is checked here: an ARN that is not an ARN, a task that is not in
the cluster the event names, a status that is not a status, a value of the wrong type. A field
that did not validate is never used to deregister anything.

Why not the Parser (pydantic): it validates the same rules, but building its models costs about
100 ms of every cold start, and a cold reactor is exactly when a burst of tasks is stopping.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from aws_lambda_powertools.utilities.data_classes import EventBridgeEvent

from cloudmap_reactor.core.model import SERVICE_GROUP_PREFIX, service_name_from_group

SOURCE = "aws.ecs"
DETAIL_TYPE = "ECS Task State Change"

_PARTITION = r"aws(?:-[a-z]+)*"
_REGION = r"[a-z]{2}(?:-[a-z]+)+-[0-9]{1,2}"
_ACCOUNT = r"[0-9]{12}"  # [0-9], not \d: \d also matches other scripts' digits
_CLUSTER_NAME = r"[A-Za-z0-9_-]{1,255}"
# Task ids: 32 hex digits, or a UUID in the old ARN format.
_TASK_ID = r"(?:[0-9a-f]{32}|[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})"

CLUSTER_ARN = re.compile(rf"arn:{_PARTITION}:ecs:{_REGION}:{_ACCOUNT}:cluster/{_CLUSTER_NAME}")
TASK_ARN = re.compile(rf"arn:{_PARTITION}:ecs:{_REGION}:{_ACCOUNT}:task/(?:{_CLUSTER_NAME}/)?{_TASK_ID}")
SERVICE_NAME = re.compile(r"[A-Za-z0-9_-]{1,255}")
STATUS = re.compile(r"[A-Z_]{1,32}")


class InvalidEvent(ValueError):
    """The event is not a well-formed ECS task state change; the message says which field and why."""


@dataclass(frozen=True, slots=True)
class TaskStateChange:
    """The validated fields of an ECS Task State Change event that the reactor reads."""

    event_id: str
    cluster_arn: str
    task_arn: str
    group: str
    desired_status: str
    last_status: str
    stopped_reason: str | None = None
    stop_code: str | None = None

    @property
    def service_name(self) -> str | None:
        return service_name_from_group(self.group)


def parse_task_state_change(
    raw: Any, *, own_account: str | None = None, own_region: str | None = None
) -> TaskStateChange:
    """Validate an EventBridge event from ECS about a task; raise ``InvalidEvent`` naming the first problem.

    ``own_account``/``own_region``: the function's; an event (envelope or cluster) from anywhere
    else is refused, whatever else it says (a replayed or forwarded event is not ours to act on).
    """
    if not isinstance(raw, dict):
        raise InvalidEvent(f"event: expected a JSON object, got {type(raw).__name__}")
    event = EventBridgeEvent(raw)
    _text(raw, "id", max_length=256)
    _text(raw, "account", pattern=re.compile(_ACCOUNT))
    _text(raw, "region", pattern=re.compile(_REGION))
    _timestamp(raw, "time")
    if not isinstance(raw.get("resources", []), list):
        raise InvalidEvent("resources: expected a list")
    if raw.get("source") != SOURCE:
        raise InvalidEvent(f"source: expected {SOURCE!r}, got {_show(raw.get('source'))}")
    if raw.get("detail-type") != DETAIL_TYPE:
        raise InvalidEvent(f"detail-type: expected {DETAIL_TYPE!r}, got {_show(raw.get('detail-type'))}")
    detail = raw.get("detail")
    if not isinstance(detail, dict):
        raise InvalidEvent("detail: expected a JSON object")

    change = TaskStateChange(
        event_id=event.get_id,
        cluster_arn=_text(detail, "clusterArn", pattern=CLUSTER_ARN, where="detail."),
        task_arn=_text(detail, "taskArn", pattern=TASK_ARN, where="detail."),
        group=_text(detail, "group", max_length=300, where="detail."),
        desired_status=_text(detail, "desiredStatus", pattern=STATUS, where="detail."),
        last_status=_text(detail, "lastStatus", pattern=STATUS, where="detail."),
        stopped_reason=_text(detail, "stoppedReason", max_length=2048, where="detail.", required=False),
        stop_code=_text(detail, "stopCode", max_length=64, where="detail.", required=False),
    )
    _check_consistency(change)
    _check_origin(raw, change, own_account, own_region)
    return change


def _check_origin(raw: dict[str, Any], change: TaskStateChange, account: str | None, region: str | None) -> None:
    _, _, _, cluster_region, cluster_account = change.cluster_arn.split(":cluster/", 1)[0].split(":")
    if (raw["account"], raw["region"]) != (cluster_account, cluster_region):
        raise InvalidEvent("detail.clusterArn: names another account or region than the event's account and region")
    if account is not None and raw["account"] != account:
        raise InvalidEvent(f"account: the event is from account {_show(raw['account'])}, not this function's")
    if region is not None and raw["region"] != region:
        raise InvalidEvent(f"region: the event is from {_show(raw['region'])}, not this function's region {region}")


def _check_consistency(change: TaskStateChange) -> None:
    cluster_prefix, cluster_name = change.cluster_arn.split(":cluster/", 1)
    task_prefix, task_path = change.task_arn.split(":task/", 1)
    if cluster_prefix != task_prefix:
        raise InvalidEvent("detail.taskArn: names another partition, region or account than detail.clusterArn")
    if "/" in task_path and task_path.split("/", 1)[0] != cluster_name:
        raise InvalidEvent("detail.taskArn: names another cluster than detail.clusterArn")
    if change.group.startswith(SERVICE_GROUP_PREFIX) and not SERVICE_NAME.fullmatch(change.service_name or ""):
        raise InvalidEvent(f"detail.group: names a service, but not a valid ECS service name: {_show(change.group)}")


def _text(
    data: dict[str, Any],
    key: str,
    *,
    pattern: re.Pattern[str] | None = None,
    max_length: int = 2048,
    where: str = "",
    required: bool = True,
) -> Any:
    value = data.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str):
        missing = key not in data
        raise InvalidEvent(f"{where}{key}: " + ("missing" if missing else f"expected a string, got {_show(value)}"))
    if pattern is not None and not pattern.fullmatch(value):
        raise InvalidEvent(f"{where}{key}: not in the expected format: {_show(value)}")
    if not 0 < len(value) <= max_length:
        raise InvalidEvent(f"{where}{key}: expected 1 to {max_length} characters, got {len(value)}")
    return value


def _timestamp(data: dict[str, Any], key: str) -> None:
    value = _text(data, key, max_length=64)
    try:
        datetime.fromisoformat(value)
    except ValueError:
        raise InvalidEvent(f"{key}: not an ISO 8601 timestamp: {_show(value)}") from None


def _show(value: Any) -> str:
    """A bounded repr: never the whole of a possibly huge input in a log line."""
    try:
        text = repr(value)
    except ValueError:  # e.g. an integer beyond Python's digit limit for str()
        return f"<{type(value).__name__}>"
    return text if len(text) <= 200 else f"{text[:200]}… ({len(text)} characters)"
