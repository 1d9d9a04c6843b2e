"""`cloudmap-reactor doctor` and `plan` against the local emulator, and proof that they only read."""

from __future__ import annotations

import json
from typing import Any

import boto3
import pytest
from botocore.client import BaseClient

from cloudmap_reactor import __version__
from cloudmap_reactor.cli import MutationRefused, main, read_only_clients
from devtools.aws_emulator import FleetBuilder, SeededService

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

    main(["doctor"])
    main(["plan"])

    operations = {call.args[1] for call in calls.call_args_list}
    assert operations
    assert all(op.startswith(("Describe", "List", "Get")) for op in operations), operations


def test_no_mutating_api_is_reachable_through_the_read_only_clients(fleet: Fleet) -> None:
    ecs, cloudmap, cloudformation = read_only_clients(None, "us-east-1")
    orders = fleet["orders"]
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
