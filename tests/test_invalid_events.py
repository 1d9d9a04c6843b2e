"""Malformed events are logged, counted in InvalidEvents and dropped; nothing is deregistered."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest

from cloudmap_reactor.handlers import task_state_change
from devtools.aws_emulator import FleetBuilder, SeededService
from devtools.local_lambda import FakeLambdaContext
from tests.conftest import task_event

Mutation = Callable[[dict[str, Any]], Any]


def _set(path: str, value: Any) -> Mutation:
    def mutate(event: dict[str, Any]) -> Any:
        target = event
        *parents, last = path.split(".")
        for key in parents:
            target = target[key]
        target[last] = value
        return event

    return mutate


def _drop(path: str) -> Mutation:
    def mutate(event: dict[str, Any]) -> Any:
        target = event
        *parents, last = path.split(".")
        for key in parents:
            target = target[key]
        del target[last]
        return event

    return mutate


MUTATIONS: dict[str, Mutation] = {
    "another source": _set("source", "aws.ec2"),
    "another detail-type": _set("detail-type", "ECS Container Instance State Change"),
    "no detail": _drop("detail"),
    "detail is a string": _set("detail", "{}"),
    "no taskArn": _drop("detail.taskArn"),
    "taskArn not an ARN": _set("detail.taskArn", "not-an-arn"),
    "taskArn of another service": _set(
        "detail.taskArn", "arn:aws:lambda:us-east-1:123456789012:function/0f4b2c6e8a1d4e7f9b3c5d7e9f1a2b3c"
    ),
    "taskArn with a path in its id": _set(
        "detail.taskArn", "arn:aws:ecs:us-east-1:123456789012:task/prod/../0f4b2c6e8a1d4e7f9b3c5d7e9f1a2b3c"
    ),
    "taskArn is a number": _set("detail.taskArn", 42),
    "task in another cluster": _set(
        "detail.taskArn", "arn:aws:ecs:us-east-1:123456789012:task/staging/0f4b2c6e8a1d4e7f9b3c5d7e9f1a2b3c"
    ),
    "task in another account": _set(
        "detail.taskArn", "arn:aws:ecs:us-east-1:210987654321:task/prod/0f4b2c6e8a1d4e7f9b3c5d7e9f1a2b3c"
    ),
    "clusterArn not an ARN": _set("detail.clusterArn", "prod"),
    "no group": _drop("detail.group"),
    "group is a list": _set("detail.group", ["service:orders"]),
    "group names no valid service": _set("detail.group", "service:orders/../payments"),
    "desiredStatus lower case": _set("detail.desiredStatus", "stopped"),
    "desiredStatus null": _set("detail.desiredStatus", None),
    "huge group": _set("detail.group", "service:" + "x" * 100_000),
    "unicode service name": _set("detail.group", "service:ördérs"),
    "no id": _drop("id"),
    "time not a time": _set("time", "yesterday"),
    "event is a list": lambda event: [event],
    "event is a string": lambda event: "ECS Task State Change",
    "event is null": lambda event: None,
    "event is empty": lambda event: {},
}


@pytest.fixture
def orders(aws: FleetBuilder) -> SeededService:
    aws.create_cluster("prod")
    service = aws.create_service("prod", "orders", discovery_names=["orders"])
    aws.start_tasks(service, 2, task_ids=["0f4b2c6e8a1d4e7f9b3c5d7e9f1a2b3c"])
    return service


@pytest.mark.parametrize("name", list(MUTATIONS))
def test_malformed_event_is_counted_and_dropped(
    aws: FleetBuilder, orders: SeededService, lambda_context: FakeLambdaContext, read_output: Any, name: str
) -> None:
    valid = task_event(orders.task_arns[0], orders.cluster_arn, group="service:orders")
    event = MUTATIONS[name](copy.deepcopy(valid))

    result = task_state_change.lambda_handler(event, lambda_context)

    assert result == {"status": "invalid"}
    assert aws.instance_ids(orders.cloudmap_service_ids[0]) == {a.rsplit("/", 1)[-1] for a in orders.task_arns}
    output = read_output()
    assert output.metrics.value("InvalidEvents") == 1
    assert output.metrics.value("TasksDeregistered") == 0
    warning = next(r for r in output.logs if r["message"] == "Dropping invalid event")
    assert warning["validation_error"]
    assert len(warning["validation_error"]) <= 1000


@pytest.mark.parametrize(
    ("mutation", "says"),
    [
        (_set("account", "210987654321"), "account"),
        (_set("region", "eu-west-1"), "region"),
    ],
)
def test_an_event_from_another_account_or_region_is_refused_and_counted(
    aws: FleetBuilder, lambda_context: FakeLambdaContext, read_output: Any, mutation: Mutation, says: str
) -> None:
    """A forwarded or replayed event from elsewhere names a cluster this function does not look after."""
    aws.create_cluster("prod")
    orders = aws.create_service("prod", "orders", discovery_names=["orders"])
    arns = aws.start_tasks(orders, 2)
    event = mutation(task_event(arns[0], orders.cluster_arn, group="service:orders"))

    assert task_state_change.lambda_handler(event, lambda_context) == {"status": "invalid"}

    assert len(aws.instance_ids(orders.cloudmap_service_ids[0])) == 2
    output = read_output()
    assert output.metrics.value("InvalidEvents") == 1
    dropped = next(r for r in output.logs if r["message"] == "Dropping invalid event")
    assert says in dropped["validation_error"]


def test_an_event_for_a_function_in_another_account_is_refused(aws: FleetBuilder, read_output: Any) -> None:
    aws.create_cluster("prod")
    orders = aws.create_service("prod", "orders", discovery_names=["orders"])
    arns = aws.start_tasks(orders, 2)
    elsewhere = FakeLambdaContext(invoked_function_arn="arn:aws:lambda:us-east-1:210987654321:function:reactor")

    result = task_state_change.lambda_handler(
        task_event(arns[0], orders.cluster_arn, group="service:orders"), elsewhere
    )

    assert result == {"status": "invalid"}
    assert len(aws.instance_ids(orders.cloudmap_service_ids[0])) == 2
