"""`cloudmap-reactor doctor` and `plan` against the local emulator, and proof that they only read."""

from __future__ import annotations

import json
import os
from typing import Any

import boto3
import pytest
from botocore.client import BaseClient

from cloudmap_reactor import __version__
from cloudmap_reactor.adapters.ledger import DynamoDbLedger
from cloudmap_reactor.cli import MutationRefused, main, read_only_clients
from cloudmap_reactor.core.decisions import QuarantineRecord
from devtools.aws_emulator import FleetBuilder, SeededService
from devtools.local_lambda import FakeLambdaContext
from tests.conftest import poll

Fleet = dict[str, SeededService]


@pytest.fixture
def fleet(aws: FleetBuilder) -> Fleet:
    """orders: healthy but for one UNHEALTHY and one UNKNOWN task, plus an instance of no task;
    payments: every task UNHEALTHY (fail-open would hold); worker: no Cloud Map at all."""
    aws.create_cluster("prod")
    orders = aws.create_service("prod", "orders", discovery_names=["orders", "orders-grpc"])
    tasks = aws.start_tasks(orders, 4)
    for arn, health in zip(tasks, ["UNHEALTHY", "UNKNOWN", "HEALTHY", "HEALTHY"], strict=True):
        aws.set_health(arn, health)
    aws.cloudmap.register_instance(
        ServiceId=orders.cloudmap_service_ids[0], InstanceId="leftover-1", Attributes={"AWS_INSTANCE_IPV4": "10.1.1.1"}
    )
    payments = aws.create_service("prod", "payments", discovery_names=["payments"])
    for arn in aws.start_tasks(payments, 2):
        aws.set_health(arn, "UNHEALTHY")
    worker = aws.create_service("prod", "worker")
    aws.start_tasks(worker, 1)
    return {"orders": orders, "payments": payments, "worker": worker}


def task_id(arn: str) -> str:
    return arn.rsplit("/", 1)[-1]


def test_doctor_reports_what_needs_attention(fleet: Fleet, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["doctor", "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    services = {s["service_name"]: s for s in report["services"]}
    assert set(services) == {"orders", "payments"}  # worker uses no Cloud Map
    orders = services["orders"]
    assert sorted(name for name, _ in orders["discovery"]) == ["orders", "orders-grpc"]
    assert (orders["running_tasks"], orders["registered_instances"]) == (4, 5)
    assert orders["unmatched_instances"] == ["leftover-1"]
    assert orders["stopping_registered"] == []
    assert orders["tasks_without_instance"] == []
    assert orders["unhealthy_registered"] == [task_id(fleet["orders"].task_arns[0])]
    assert orders["unknown_health"] == 1
    assert orders["fail_open"] is False
    assert services["payments"]["fail_open"] is True
    assert report["needs_attention"] is True


def test_doctor_table_and_exit_code_zero_when_all_is_well(
    aws: FleetBuilder, capsys: pytest.CaptureFixture[str]
) -> None:
    aws.create_cluster("prod")
    orders = aws.create_service("prod", "orders", discovery_names=["orders"])
    for arn in aws.start_tasks(orders, 2):
        aws.set_health(arn, "HEALTHY")

    assert main(["doctor", "--cluster", "prod"]) == 0
    captured = capsys.readouterr()
    assert "prod/orders" in captured.out
    assert " ok" in captured.out
    assert "ATTENTION" not in captured.out
    assert "[1/1] scanning prod" in captured.err  # progress goes to stderr


def test_plan_prints_what_a_pass_would_do_and_changes_nothing(
    aws: FleetBuilder, fleet: Fleet, capsys: pytest.CaptureFixture[str]
) -> None:
    before = {sid: aws.instance_ids(sid) for s in fleet.values() for sid in s.cloudmap_service_ids}

    assert main(["plan", "--json"]) == 0

    plan = json.loads(capsys.readouterr().out)
    unhealthy = task_id(fleet["orders"].task_arns[0])
    assert sorted((d["instance_id"], d["reason"]) for d in plan["deregister"]) == [
        (unhealthy, "Unhealthy"),
        (unhealthy, "Unhealthy"),
    ]
    assert [held["services"] for held in plan["fail_open"]] == [["payments"]]
    assert {d["rule"] for d in plan["deregister"]} == {"ecs-unhealthy"}
    assert plan["orphan_instances"] == ["leftover-1"]
    assert {sid: aws.instance_ids(sid) for s in fleet.values() for sid in s.cloudmap_service_ids} == before


def test_doctor_and_plan_make_only_read_calls(fleet: Fleet, mocker: Any) -> None:
    calls = mocker.spy(BaseClient, "_make_api_call")

    main(["doctor", "--ledger-table", os.environ["LEDGER_TABLE"]])
    main(["plan", "--ledger-table", os.environ["LEDGER_TABLE"]])

    operations = {call.args[1] for call in calls.call_args_list}
    assert "Query" in operations  # the quarantine ledger, through the read-only DynamoDB client
    assert all(op.startswith(("Describe", "List", "Get", "Query")) for op in operations), operations


def test_no_mutating_api_is_reachable_through_the_read_only_clients(fleet: Fleet) -> None:
    ecs, cloudmap, cloudformation, dynamodb, _ = read_only_clients(boto3.Session(region_name="us-east-1"))
    orders = fleet["orders"]
    table = os.environ["LEDGER_TABLE"]
    key = {"pk": {"S": "quarantine"}, "sk": {"S": "srv-1#task-1"}}
    with pytest.raises(MutationRefused, match="dynamodb:PutItem"):
        dynamodb.put_item(TableName=table, Item=key)
    with pytest.raises(MutationRefused, match="dynamodb:DeleteItem"):
        dynamodb.delete_item(TableName=table, Key=key)
    with pytest.raises(MutationRefused, match="dynamodb:ExecuteStatement"):
        dynamodb.execute_statement(Statement=f"DELETE FROM \"{table}\" WHERE pk = 'quarantine'")  # noqa: S608
    with pytest.raises(MutationRefused, match="RegisterInstance"):
        cloudmap.register_instance(ServiceId=orders.cloudmap_service_ids[0], InstanceId="x", Attributes={})
    with pytest.raises(MutationRefused, match="StopTask"):
        ecs.stop_task(cluster="prod", task=orders.task_arns[0])
    assert (
        dynamodb.query(  # reads go through
            TableName=table, KeyConditionExpression="pk = :pk", ExpressionAttributeValues={":pk": {"S": "quarantine"}}
        )["Items"]
        == []
    )
    with pytest.raises(MutationRefused, match="DeregisterInstance"):
        cloudmap.deregister_instance(ServiceId=orders.cloudmap_service_ids[0], InstanceId=task_id(orders.task_arns[0]))
    with pytest.raises(MutationRefused, match="UpdateService"):
        ecs.update_service(cluster="prod", service="orders", forceNewDeployment=True)
    with pytest.raises(MutationRefused, match="UpdateStack"):
        cloudformation.update_stack(StackName="cloudmap-reactor", UsePreviousTemplate=True)
    plain = boto3.client("servicediscovery")
    assert task_id(orders.task_arns[0]) in {
        i["Id"] for i in plain.list_instances(ServiceId=orders.cloudmap_service_ids[0])["Instances"]
    }


def test_doctor_tells_stopping_tasks_from_unknown_instances(
    aws: FleetBuilder, fleet: Fleet, capsys: pytest.CaptureFixture[str]
) -> None:
    leaving = fleet["orders"].task_arns[2]
    aws.begin_stopping(leaving)

    assert main(["doctor", "--json", "--cluster", "prod"]) == 1

    orders = next(s for s in json.loads(capsys.readouterr().out)["services"] if s["service_name"] == "orders")
    assert orders["stopping_registered"] == [task_id(leaving)]
    assert orders["unmatched_instances"] == ["leftover-1"]
    assert orders["running_tasks"] == 3


def test_doctor_shows_http_checks_and_flags_a_wrong_tag(aws: FleetBuilder, capsys: pytest.CaptureFixture[str]) -> None:
    aws.create_cluster("prod")
    for name, tags in (
        ("catalog", {"cloudmap-reactor:http-check": "8081/healthz", "cloudmap-reactor:http-check-codes": "200"}),
        ("search", {"cloudmap-reactor:http-check": "healthz"}),
        ("orders", {}),
    ):
        service = aws.create_service("prod", name, discovery_names=[name], tags=tags)
        aws.start_tasks(service, 2)  # no container health check: UNKNOWN

    assert main(["doctor", "--json"]) == 1
    services = {s["service_name"]: s for s in json.loads(capsys.readouterr().out)["services"]}
    assert services["catalog"]["http_check"] == "GET /healthz on port 8081, 200"
    assert services["catalog"]["needs_attention"] is False
    assert services["search"]["http_check"] is None
    assert "must be a path (/healthz)" in services["search"]["http_check_error"]
    assert services["search"]["needs_attention"] is True

    assert main(["doctor"]) == 1
    table = capsys.readouterr().out
    assert "search: not probed: cloudmap-reactor:http-check='healthz'" in table
    assert "orders: 2 task(s) without a container health check (UNKNOWN); tag cloudmap-reactor:http-check" in table
    assert "catalog: 2 task(s)" not in table


def test_version_names_the_package_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit, match="0"):
        main(["--version"])
    assert capsys.readouterr().out == f"cloudmap-reactor {__version__}\n"


@pytest.mark.parametrize("command", ["doctor", "plan"])
def test_each_read_only_command_has_its_own_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit, match="0"):
        main([command, "--help"])
    usage = capsys.readouterr().out
    assert usage.startswith(f"usage: cloudmap-reactor {command} ")
    for option in ("--cluster", "--profile", "--region", "--json", "--min-healthy-percent", "--tag-scope"):
        assert option in usage


def test_a_command_is_required(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit, match="2"):
        main([])
    assert "required: command" in capsys.readouterr().err


# -- the quarantine ledger ------------------------------------------------------------------------
def ledger_table() -> str:
    return os.environ["LEDGER_TABLE"]  # the aws fixture created it, as template.yaml declares it


def records() -> dict[tuple[str, str], QuarantineRecord]:
    return {r.key: r for r in DynamoDbLedger(boto3.client("dynamodb"), ledger_table()).quarantined()[0]}


@pytest.fixture
def quarantined(aws: FleetBuilder, lambda_context: FakeLambdaContext) -> SeededService:
    """orders: four HEALTHY tasks, then the first UNHEALTHY: the poller takes it out and records it."""
    aws.create_cluster("prod")
    orders = aws.create_service("prod", "orders", discovery_names=["orders"])
    for arn in aws.start_tasks(orders, 4):
        aws.set_health(arn, "HEALTHY")
    aws.set_health(orders.task_arns[0], "UNHEALTHY")
    poll(lambda_context)
    assert set(records()) == {(orders.cloudmap_service_ids[0], task_id(orders.task_arns[0]))}
    return orders


def test_plan_lists_the_quarantined_instance_and_after_its_recovery_the_restore(
    aws: FleetBuilder, quarantined: SeededService, capsys: pytest.CaptureFixture[str]
) -> None:
    sid, sick = quarantined.cloudmap_service_ids[0], task_id(quarantined.task_arns[0])
    registered, recorded = aws.instance_ids(sid), records()

    assert main(["plan", "--json", "--ledger-table", ledger_table()]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["ledger"] == {"table": ledger_table(), "read": True, "unreadable_items": 0}
    [entry] = plan["quarantined"]
    assert {k: entry[k] for k in ("cloudmap_service_id", "instance_id", "service", "reason", "rule")} == {
        "cloudmap_service_id": sid,
        "instance_id": sick,
        "service": "orders",
        "reason": "Unhealthy",
        "rule": "ecs-unhealthy",
    }
    assert 0 <= entry["quarantined_seconds"] < 60
    assert (plan["restore"], plan["forget"], plan["replace"], plan["deregister"]) == ([], [], [], [])

    aws.set_health(quarantined.task_arns[0], "HEALTHY")
    assert main(["plan", "--json", "--ledger-table", ledger_table()]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert [(r["cloudmap_service_id"], r["instance_id"], r["rule"]) for r in plan["restore"]] == [
        (sid, sick, "recovered")
    ]

    assert main(["plan", "--ledger-table", ledger_table()]) == 0
    text = capsys.readouterr().out
    assert f"quarantined {sick} in {sid} (orders, Unhealthy, rule ecs-unhealthy, for " in text
    assert f"would register again {sick} in {sid} (orders, quarantined for Unhealthy) (recovered)" in text
    assert (aws.instance_ids(sid), records()) == (registered, recorded)  # plan changed nothing


def test_plan_forgets_a_quarantined_instance_whose_task_stopped(
    aws: FleetBuilder, quarantined: SeededService, capsys: pytest.CaptureFixture[str]
) -> None:
    aws.ecs.stop_task(cluster="prod", task=quarantined.task_arns[0], reason="replaced")

    assert main(["plan", "--ledger-table", ledger_table()]) == 0

    sid, gone = quarantined.cloudmap_service_ids[0], task_id(quarantined.task_arns[0])
    assert f"would forget {gone} in {sid} (orders, quarantined for Unhealthy) (task stopped)" in capsys.readouterr().out
    assert set(records()) == {(sid, gone)}


def test_plan_reads_the_ledger_the_deployed_stack_names_and_says_when_it_reads_none(
    quarantined: SeededService, capsys: pytest.CaptureFixture[str], mocker: Any
) -> None:
    stack = {
        "StackName": "cloudmap-reactor",
        "Outputs": [{"OutputKey": "LedgerTableName", "OutputValue": ledger_table()}],
    }
    mocker.patch("cloudmap_reactor.cli.describe_stack", return_value=stack)

    assert main(["plan", "--json", "--stack", "cloudmap-reactor"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["ledger"]["table"] == ledger_table()
    assert [q["instance_id"] for q in plan["quarantined"]] == [task_id(quarantined.task_arns[0])]

    assert main(["plan", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert (plan["ledger"]["read"], plan["quarantined"]) == (False, [])
    assert main(["plan"]) == 0
    assert "quarantine ledger not read (give --stack or --ledger-table)" in capsys.readouterr().out


def test_doctor_counts_quarantined_instances_and_those_it_would_forget(
    aws: FleetBuilder, quarantined: SeededService, capsys: pytest.CaptureFixture[str]
) -> None:
    sick = task_id(quarantined.task_arns[0])

    assert main(["doctor", "--json", "--ledger-table", ledger_table()]) == 0  # quarantine is not trouble
    report = json.loads(capsys.readouterr().out)
    [orders] = report["services"]
    assert (orders["quarantined"], orders["quarantined_instances"], orders["would_forget"]) == (1, [sick], [])
    assert orders["tasks_without_instance"] == []  # out on purpose, not lost
    assert report["ledger"] == {
        "table": ledger_table(),
        "read": True,
        "records": 1,
        "unreadable_items": 0,
        "error": None,
    }

    aws.ecs.stop_task(cluster="prod", task=quarantined.task_arns[0], reason="replaced")
    assert main(["doctor", "--ledger-table", ledger_table()]) == 0
    table = capsys.readouterr().out
    assert f"orders: quarantined, but its task no longer runs: the poller would forget it: {sick}" in table
    assert f"quarantine ledger {ledger_table()}: 1 record(s)" in table

    assert main(["doctor", "--json"]) == 0
    [orders] = json.loads(capsys.readouterr().out)["services"]
    assert orders["quarantined"] is None  # unknown without the ledger


def test_doctor_flags_an_instance_whose_attribute_keys_differ_from_its_siblings(
    aws: FleetBuilder, capsys: pytest.CaptureFixture[str]
) -> None:
    """As a restore that did not put back what ECS wrote would leave it: registered again by hand."""
    aws.create_cluster("prod")
    orders = aws.create_service("prod", "orders", discovery_names=["orders"])
    for arn in aws.start_tasks(orders, 4):
        aws.set_health(arn, "HEALTHY")
    sid = orders.cloudmap_service_ids[0]
    plain = boto3.client("servicediscovery")
    written = {i["Id"]: i["Attributes"] for i in plain.list_instances(ServiceId=sid)["Instances"]}
    extra, missing = task_id(orders.task_arns[1]), task_id(orders.task_arns[2])
    plain.register_instance(ServiceId=sid, InstanceId=extra, Attributes={**written[extra], "RESTORED_BY": "hand"})
    plain.deregister_instance(ServiceId=sid, InstanceId=missing)
    fewer = {k: v for k, v in written[missing].items() if k != "ECS_TASK_DEFINITION_FAMILY"}
    plain.register_instance(ServiceId=sid, InstanceId=missing, Attributes=fewer)

    assert main(["doctor", "--json"]) == 1
    [service] = json.loads(capsys.readouterr().out)["services"]
    assert sorted(service["attribute_key_mismatches"], key=lambda m: m["extra"]) == [
        {"cloudmap_service_id": sid, "instance_id": missing, "missing": ["ECS_TASK_DEFINITION_FAMILY"], "extra": []},
        {"cloudmap_service_id": sid, "instance_id": extra, "missing": [], "extra": ["RESTORED_BY"]},
    ]  # the two others, registered by ECS, are the majority
    assert service["needs_attention"] is True

    assert main(["doctor"]) == 1
    table = capsys.readouterr().out
    assert f"orders: attribute keys differ from its siblings' in {sid}: {extra} (extra RESTORED_BY)" in table
    assert f"in {sid}: {missing} (missing ECS_TASK_DEFINITION_FAMILY)" in table


def test_doctor_names_a_task_ecs_stopped_and_left_registered(
    aws: FleetBuilder, capsys: pytest.CaptureFixture[str]
) -> None:
    aws.create_cluster("prod")
    orders = aws.create_service("prod", "orders", discovery_names=["orders"])
    for arn in aws.start_tasks(orders, 3):
        aws.set_health(arn, "HEALTHY")
    stopped, stopping = orders.task_arns[0], orders.task_arns[1]
    aws.ecs.stop_task(cluster="prod", task=stopped, reason="Essential container exited")
    aws.begin_stopping(stopping)

    assert main(["doctor", "--json"]) == 1
    [service] = json.loads(capsys.readouterr().out)["services"]
    assert service["stopped_registered"] == [task_id(stopped)]
    assert service["stopping_registered"] == sorted(task_id(a) for a in (stopped, stopping))

    assert main(["doctor"]) == 1
    table = capsys.readouterr().out
    assert f"orders: ECS left it registered after its task stopped: {task_id(stopped)}" in table
    assert f"orders: stopping but still registered: {task_id(stopping)}" in table


def test_doctor_and_plan_with_the_ledger_make_only_read_calls(
    aws: FleetBuilder, quarantined: SeededService, mocker: Any
) -> None:
    aws.set_health(quarantined.task_arns[0], "HEALTHY")  # plan would restore it
    calls = mocker.spy(BaseClient, "_make_api_call")

    main(["doctor", "--ledger-table", ledger_table()])
    main(["plan", "--ledger-table", ledger_table()])

    operations = {call.args[1] for call in calls.call_args_list}
    assert "Query" in operations  # the ledger was read, through the read-only DynamoDB client
    assert all(op.startswith(("Describe", "List", "Get", "Query")) for op in operations), operations
    assert task_id(quarantined.task_arns[0]) not in aws.instance_ids(quarantined.cloudmap_service_ids[0])
