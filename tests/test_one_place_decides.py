"""The poller and ``plan`` take the same decisions on the same account: one module decides for both."""

from __future__ import annotations

import json
import os
from typing import Any

import boto3
import pytest

from cloudmap_reactor.adapters.ledger import DynamoDbLedger
from cloudmap_reactor.cli import main
from cloudmap_reactor.handlers import health_poller
from devtools.aws_emulator import FleetBuilder
from devtools.local_lambda import FakeLambdaContext
from tests.conftest import load_event


def registrations(aws: FleetBuilder) -> set[tuple[str, str]]:
    services = aws.cloudmap.list_services()["Services"]
    return {(s["Id"], i) for s in services for i in aws.instance_ids(s["Id"])}


def quarantine_records() -> set[tuple[str, str]]:
    records, _ = DynamoDbLedger(boto3.client("dynamodb"), os.environ["LEDGER_TABLE"]).quarantined()
    return {r.key for r in records}


@pytest.fixture
def mixed_fleet(aws: FleetBuilder) -> None:
    """Every rule at work at once: ECS health, fail-open, reconciliation of a stopping task, an orphan."""
    aws.create_cluster("prod")
    orders = aws.create_service("prod", "orders", discovery_names=["orders", "orders-grpc"])
    for arn, health in zip(
        aws.start_tasks(orders, 5), ["UNHEALTHY", "UNKNOWN", "HEALTHY", "HEALTHY", "HEALTHY"], strict=True
    ):
        aws.set_health(arn, health)
    aws.begin_stopping(orders.task_arns[4])  # ECS is stopping it; its stop event was missed
    aws.cloudmap.register_instance(
        ServiceId=orders.cloudmap_service_ids[0], InstanceId="leftover-1", Attributes={"AWS_INSTANCE_IPV4": "10.1.1.1"}
    )
    payments = aws.create_service("prod", "payments", discovery_names=["payments"])
    for arn in aws.start_tasks(payments, 2):
        aws.set_health(arn, "UNHEALTHY")  # fail-open holds
    aws.create_cluster("staging")
    web = aws.create_service("staging", "web", discovery_names=["web"])
    for arn, health in zip(aws.start_tasks(web, 3), ["UNHEALTHY", "HEALTHY", "HEALTHY"], strict=True):
        aws.set_health(arn, health)


def test_plan_lists_exactly_what_the_poller_then_removes(
    aws: FleetBuilder, mixed_fleet: None, lambda_context: FakeLambdaContext, capsys: pytest.CaptureFixture[str]
) -> None:
    before = registrations(aws)

    assert main(["plan", "--json"]) == 0
    plan: dict[str, Any] = json.loads(capsys.readouterr().out)
    planned = {(d["cloudmap_service_id"], d["instance_id"], d["reason"]) for d in plan["deregister"]}
    assert registrations(aws) == before  # plan wrote nothing

    health_poller.lambda_handler(load_event("scheduled-poll.json"), lambda_context)

    removed = before - registrations(aws)
    assert removed == {(sid, iid) for sid, iid, _ in planned}
    assert {reason for *_, reason in planned} == {"Unhealthy", "Reconciled"}
    assert [held["services"] for held in plan["fail_open"]] == [["payments"]]
    assert plan["orphan_instances"] == ["leftover-1"]


def test_plan_judges_with_the_deployed_stacks_parameters(
    aws: FleetBuilder, mixed_fleet: None, capsys: pytest.CaptureFixture[str], mocker: Any
) -> None:
    """``--stack``: the guard switched off in the stack (MinHealthyPercent=0) lets payments' tasks go too."""
    parameters = [
        {"ParameterKey": "MinHealthyPercent", "ParameterValue": "0"},
        {"ParameterKey": "DryRun", "ParameterValue": "true"},
    ]
    described = {"Stacks": [{"StackName": "cloudmap-reactor", "Parameters": parameters}]}
    mocker.patch("cloudmap_reactor.cli.describe_stack", return_value=described["Stacks"][0])

    assert main(["plan", "--json", "--stack", "cloudmap-reactor"]) == 0

    plan = json.loads(capsys.readouterr().out)
    assert plan["fail_open"] == []
    assert {d["service"] for d in plan["deregister"]} >= {"payments", "orders", "web"}


def test_what_plan_would_restore_and_forget_is_what_the_poller_restores_and_forgets(
    aws: FleetBuilder, lambda_context: FakeLambdaContext, capsys: pytest.CaptureFixture[str]
) -> None:
    """The quarantine too: one task recovers (back in both its Cloud Map services), another is stopped (forgotten)."""
    aws.create_cluster("prod")
    orders = aws.create_service("prod", "orders", discovery_names=["orders", "orders-grpc"])
    web = aws.create_service("prod", "web", discovery_names=["web"])
    for arn in [*aws.start_tasks(orders, 4), *aws.start_tasks(web, 3)]:
        aws.set_health(arn, "HEALTHY")
    recovering, replaced = orders.task_arns[0], web.task_arns[0]
    for arn in (recovering, replaced):
        aws.set_health(arn, "UNHEALTHY")
    health_poller.lambda_handler(load_event("scheduled-poll.json"), lambda_context)
    assert len(quarantine_records()) == 3  # one per Cloud Map service the sick tasks were in
    aws.set_health(recovering, "HEALTHY")
    aws.ecs.stop_task(cluster="prod", task=replaced, reason="Task failed container health checks")
    capsys.readouterr()
    before = registrations(aws)

    assert main(["plan", "--json", "--ledger-table", os.environ["LEDGER_TABLE"]]) == 0
    plan: dict[str, Any] = json.loads(capsys.readouterr().out)
    restore = {(r["cloudmap_service_id"], r["instance_id"]) for r in plan["restore"]}
    forget = {(f["cloudmap_service_id"], f["instance_id"]) for f in plan["forget"]}
    assert {iid for _, iid in restore} == {recovering.rsplit("/", 1)[-1]}
    assert {iid for _, iid in forget} == {replaced.rsplit("/", 1)[-1]}
    assert (len(restore), len(forget)) == (2, 1)
    assert (registrations(aws), len(quarantine_records())) == (before, 3)  # plan wrote nothing

    health_poller.lambda_handler(load_event("scheduled-poll.json"), lambda_context)

    assert registrations(aws) - before == restore
    assert before - registrations(aws) == set()
    assert quarantine_records() == set()  # restored ones and forgotten ones alike: no record left
