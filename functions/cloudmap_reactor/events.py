"""The ECS task state change event, validated with the Powertools Parser.

Everything the reactor acts on is checked here: an ARN that is not an ARN, a task that is not in
the cluster the event names, a status that is not a status. A field that did not validate is
never used to deregister anything.
"""

from __future__ import annotations

import re
from typing import Literal

from aws_lambda_powertools.utilities.parser.models import EventBridgeModel
from pydantic import BaseModel, ConfigDict, Field, model_validator

from cloudmap_reactor.core.model import service_name_from_group

_PARTITION = r"aws(?:-[a-z]+)*"
_REGION = r"[a-z]{2}(?:-[a-z]+)+-\d{1,2}"
_ACCOUNT = r"\d{12}"
_CLUSTER_NAME = r"[A-Za-z0-9_-]{1,255}"
# Task ids: 32 hex digits, or a UUID in the old ARN format.
_TASK_ID = r"(?:[0-9a-f]{32}|[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})"

CLUSTER_ARN_REGEX = rf"^arn:{_PARTITION}:ecs:{_REGION}:{_ACCOUNT}:cluster/{_CLUSTER_NAME}$"
TASK_ARN_REGEX = rf"^arn:{_PARTITION}:ecs:{_REGION}:{_ACCOUNT}:task/(?:{_CLUSTER_NAME}/)?{_TASK_ID}$"
SERVICE_NAME_REGEX = r"^[A-Za-z0-9_-]{1,255}$"
STATUS_REGEX = r"^[A-Z_]{1,32}$"
_SERVICE_NAME = re.compile(SERVICE_NAME_REGEX)


class TaskStateChangeDetail(BaseModel):
    """The fields of an ECS Task State Change ``detail`` that the reactor reads (others ignored)."""

    model_config = ConfigDict(extra="ignore", frozen=True, strict=True, populate_by_name=True)

    cluster_arn: str = Field(alias="clusterArn", pattern=CLUSTER_ARN_REGEX)
    task_arn: str = Field(alias="taskArn", pattern=TASK_ARN_REGEX)
    group: str = Field(min_length=1, max_length=300)
    desired_status: str = Field(alias="desiredStatus", pattern=STATUS_REGEX)
    last_status: str = Field(alias="lastStatus", pattern=STATUS_REGEX)
    stopped_reason: str | None = Field(default=None, alias="stoppedReason", max_length=2048)
    stop_code: str | None = Field(default=None, alias="stopCode", max_length=64)

    @model_validator(mode="after")
    def _task_belongs_to_cluster(self) -> TaskStateChangeDetail:
        cluster_prefix, cluster_name = self.cluster_arn.split(":cluster/", 1)
        task_prefix, task_path = self.task_arn.split(":task/", 1)
        if cluster_prefix != task_prefix:
            raise ValueError("taskArn and clusterArn name different partitions, regions or accounts")
        if "/" in task_path and task_path.split("/", 1)[0] != cluster_name:
            raise ValueError("taskArn names a different cluster than clusterArn")
        if self.group.startswith("service:") and not _SERVICE_NAME.fullmatch(self.service_name or ""):
            raise ValueError("group names a service, but not a valid ECS service name")
        return self

    @property
    def service_name(self) -> str | None:
        return service_name_from_group(self.group)


class TaskStateChangeEvent(EventBridgeModel):
    """An EventBridge event from ECS about a task; any other source or type fails validation."""

    source: Literal["aws.ecs"]
    detail_type: Literal["ECS Task State Change"] = Field(alias="detail-type")
    detail: TaskStateChangeDetail
