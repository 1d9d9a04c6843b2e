"""The CLI as an on-call engineer meets it, against the local emulator (a deployed stack included).

Every report names the account, the region and the stack, and says what it found; an unreadable
cluster or an empty region is said loudly; `status` sums a deployed stack up in read-only calls;
`undo` puts back exactly what the quarantine took out, only for tasks that still run.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from typing import Any, NamedTuple

import boto3
import pytest
from botocore.client import BaseClient
from moto.cloudwatch.models import cloudwatch_backends
from moto.core.common_models import CloudFormationModel
from moto.core.exceptions import JsonRESTError
from moto.ecs.models import EC2ContainerServiceBackend

from cloudmap_reactor import redrive
from cloudmap_reactor.adapters.ledger import DynamoDbLedger
from cloudmap_reactor.cli import main
from cloudmap_reactor.context import CommandError, aws_target
from cloudmap_reactor.core.decisions import QuarantineRecord
from devtools.aws_emulator import FleetBuilder, SeededService
from devtools.local_lambda import FakeLambdaContext
from tests.conftest import poll

ACCOUNT = "123456789012"  # the emulator's
STACK = "cloudmap-reactor"
READS = ("Describe", "List", "Get", "Query")


def task_id(arn: str) -> str:
    return arn.rsplit("/", 1)[-1]


def ledger_table() -> str:
    return os.environ["LEDGER_TABLE"]


def records() -> dict[tuple[str, str], QuarantineRecord]:
    return {r.key: r for r in DynamoDbLedger(boto3.client("dynamodb"), ledger_table()).quarantined()[0]}


class StackAlarm(CloudFormationModel):
    """An emulator gap: moto's CloudFormation creates no AWS::CloudWatch::Alarm; this one is created in
    moto's CloudWatch, so that ListStackResources and DescribeAlarms answer as they do for a real stack."""

    def __init__(self, name: str) -> None:
        self.name = name

    @property
    def physical_resource_id(self) -> str:
        return self.name

    @staticmethod
    def cloudformation_name_type() -> str:
        return "AlarmName"

    @staticmethod
    def cloudformation_type() -> str:
        return "AWS::CloudWatch::Alarm"

    @classmethod
    def has_cfn_attr(cls, attr: str) -> bool:
        return attr == "Arn"

    @classmethod
    def create_from_cloudformation_json(
        cls, resource_name: str, cloudformation_json: dict[str, Any], account_id: str, region_name: str, **_: Any
    ) -> StackAlarm:
        p = cloudformation_json["Properties"]
        cloudwatch_backends[account_id][region_name].put_metric_alarm(
            name=p["AlarmName"],
            namespace=p["Namespace"],
            metric_name=p["MetricName"],
            comparison_operator=p["ComparisonOperator"],
            evaluation_periods=int(p["EvaluationPeriods"]),
            period=int(p["Period"]),
            threshold=float(p["Threshold"]),
            statistic=p["Statistic"],
            description="",
            dimensions=p["Dimensions"],
            alarm_actions=[],
        )
        return cls(p["AlarmName"])


def deploy_stack(**parameters: str) -> str:
    """A stack shaped like template.yaml where the CLI reads it: parameters, outputs, a queue, alarms."""
    names = {"Enabled": "true", "DryRun": "false", "MinHealthyPercent": "50", **parameters}
    alarm = {
        "Namespace": "CloudMapReactor",
        "Dimensions": [{"Name": "service", "Value": STACK}],
        "Statistic": "Sum",
        "Period": 60,
        "EvaluationPeriods": 3,
        "ComparisonOperator": "LessThanThreshold",
        "Threshold": 1,
    }
    template = {
        "Parameters": {name: {"Type": "String"} for name in names},
        "Resources": {
            "DeadLetterQueue": {"Type": "AWS::SQS::Queue"},
            "HeartbeatAlarm": {
                "Type": "AWS::CloudWatch::Alarm",
                "Properties": {"AlarmName": f"{STACK}-heartbeat", "MetricName": "HealthScanCompleted", **alarm},
            },
            "ErrorsAlarm": {
                "Type": "AWS::CloudWatch::Alarm",
                "Properties": {"AlarmName": f"{STACK}-errors", "MetricName": "DeregistrationErrors", **alarm},
            },
        },
        "Outputs": {
            "LedgerTableName": {"Value": ledger_table()},
            "DeadLetterQueueUrl": {"Value": {"Ref": "DeadLetterQueue"}},
            "Version": {"Value": "9.9.9"},
        },
    }
    boto3.client("cloudformation").create_stack(
        StackName=STACK,
        TemplateBody=json.dumps(template),
        Parameters=[{"ParameterKey": k, "ParameterValue": v} for k, v in names.items()],
    )
    [url] = boto3.client("sqs").list_queues(QueueNamePrefix=f"{STACK}-DeadLetterQueue")["QueueUrls"]
    return url


@pytest.fixture
def fleet(aws: FleetBuilder) -> dict[str, SeededService]:
    """prod: orders (healthy but one UNHEALTHY task) and payments (every task UNHEALTHY: fail-open holds)."""
    aws.create_cluster("prod")
    orders = aws.create_service("prod", "orders", discovery_names=["orders"])
    for arn, health in zip(aws.start_tasks(orders, 4), ["UNHEALTHY", "HEALTHY", "HEALTHY", "HEALTHY"], strict=True):
        aws.set_health(arn, health)
    payments = aws.create_service("prod", "payments", discovery_names=["payments"])
    for arn in aws.start_tasks(payments, 2):
        aws.set_health(arn, "UNHEALTHY")
    return {"orders": orders, "payments": payments}


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


# -- every report says where it looked ------------------------------------------------------------
@pytest.mark.parametrize("command", ["doctor", "plan"])
def test_reports_start_with_account_region_stack_and_what_was_found(
    fleet: dict[str, SeededService], capsys: pytest.CaptureFixture[str], command: str
) -> None:
    code, out, _ = run(capsys, command)
    assert code == (1 if command == "doctor" else 0)  # doctor: an UNHEALTHY task is still registered
    head = out.splitlines()[:5]
    assert head[0].startswith(f"account  {ACCOUNT} (arn:aws:sts::{ACCOUNT}:")
    assert head[1] == "region   us-east-1 (from AWS_REGION)"
    assert head[2] == "stack    none given (--stack NAME)"
    assert head[3] == "settings built-in defaults (no --stack: not a deployed stack's parameters)"
    assert head[4] == "found    1 ECS cluster(s), every cluster of the region: prod"

    _, out, _ = run(capsys, command, "--json")
    context = json.loads(out)["context"]
    assert {k: context[k] for k in ("account", "region", "region_source", "stack", "found")} == {
        "account": ACCOUNT,
        "region": "us-east-1",
        "region_source": "AWS_REGION",
        "stack": None,
        "found": ["1 ECS cluster(s), every cluster of the region: prod"],
    }
    assert context["settings"].startswith("built-in defaults")


def test_plan_judges_with_the_deployed_stacks_parameters(
    fleet: dict[str, SeededService], capsys: pytest.CaptureFixture[str]
) -> None:
    deploy_stack(MinHealthyPercent="0")  # no fail-open: payments' UNHEALTHY tasks would leave too

    code, out, _ = run(capsys, "plan", "--json", "--stack", STACK)

    plan = json.loads(out)
    assert code == 0
    assert plan["context"]["stack"] == STACK
    assert (plan["context"]["stack_status"], plan["context"]["version"]) == ("CREATE_COMPLETE", "9.9.9")
    assert plan["context"]["settings"].startswith("the deployed stack's 3 parameters")
    assert plan["fail_open"] == []
    assert {d["service"] for d in plan["deregister"]} == {"orders", "payments"}
    assert plan["ledger"]["table"] == ledger_table()  # the stack's LedgerTableName output

    _, out, _ = run(capsys, "plan", "--json", "--stack", STACK, "--min-healthy-percent", "50")
    plan = json.loads(out)
    assert [held["services"] for held in plan["fail_open"]] == [["payments"]]  # the command line wins
    assert plan["context"]["settings"].endswith("overridden by --min-healthy-percent")

    _, out, _ = run(capsys, "plan")  # the defaults: 50 %, so payments is held
    assert "would keep payments's unhealthy tasks" in out
    assert "settings built-in defaults" in out


def test_a_stack_that_is_not_there_is_an_error_naming_the_region(
    aws: FleetBuilder, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, "doctor", "--stack", "nope")
    assert (code, out) == (2, "")
    assert "stack nope not found in us-east-1 (wrong region or account?)" in err


class Denied(JsonRESTError):
    def __init__(self) -> None:
        super().__init__("AccessDeniedException", "not authorized on broken")


@pytest.fixture
def broken_cluster(aws: FleetBuilder, fleet: dict[str, SeededService], mocker: Any) -> str:
    """A second cluster whose services cannot be listed (access denied), next to prod."""
    arn = aws.create_cluster("broken")
    aws.start_tasks(aws.create_service("broken", "web", discovery_names=["web"]), 1)
    real = EC2ContainerServiceBackend.list_services

    def list_services(self: Any, cluster_str: str, *args: Any, **kwargs: Any) -> Any:
        if cluster_str.endswith("broken"):
            raise Denied
        return real(self, cluster_str, *args, **kwargs)

    mocker.patch.object(EC2ContainerServiceBackend, "list_services", list_services)
    return arn


@pytest.mark.parametrize("command", ["doctor", "plan"])
def test_an_unreadable_cluster_is_reported_and_the_others_are_still_judged(
    broken_cluster: str, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    code, out, err = run(capsys, command, "--json")
    report = json.loads(out)
    assert code == 1
    assert [s["cluster"] for s in report["clusters_not_scanned"]] == [broken_cluster]
    assert "AccessDeniedException" in report["clusters_not_scanned"][0]["error"]
    assert report["warnings"] == ["1 cluster(s) could not be read: the report leaves them out (see below)"]
    assert report["context"]["found"][0].startswith("2 ECS cluster(s)")
    if command == "doctor":
        assert {s["service_name"] for s in report["services"]} == {"orders", "payments"}
    else:
        assert {d["service"] for d in report["deregister"]} == {"orders"}
    assert "WARNING: 1 cluster(s) could not be read" in err

    code, out, _ = run(capsys, command)
    assert code == 1
    assert "WARNING: 1 cluster(s) could not be read" in out
    assert f"could not read {broken_cluster} (Error): ListServices on {broken_cluster} failed" in out
    assert "prod/orders" in out if command == "doctor" else "would deregister" in out


@pytest.mark.parametrize("command", ["doctor", "plan"])
def test_no_cluster_at_all_is_a_loud_warning_not_a_clean_bill_of_health(
    aws: FleetBuilder, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    code, out, err = run(capsys, command)
    warning = f"0 ECS clusters in account {ACCOUNT}, region us-east-1: nothing was checked"
    assert code == 1
    assert f"WARNING: {warning}" in out
    assert f"WARNING: {warning}" in err
    code, out, _ = run(capsys, command, "--json")
    assert code == 1
    assert json.loads(out)["warnings"][0].startswith(warning)


def test_plan_lists_stale_service_connect_clients(aws: FleetBuilder, capsys: pytest.CaptureFixture[str]) -> None:
    aws.create_cluster("prod")
    mysql = aws.create_service("prod", "mysql", discovery_names=["mysql"])
    client = aws.create_service(
        "prod", "wordpress", service_connect=True, tags={"cloudmap-reactor:depends-on": "mysql"}
    )
    aws.start_tasks(client, 2, started_at=datetime(2020, 1, 1, tzinfo=UTC))  # before the endpoint existed
    aws.start_tasks(mysql, 1)

    code, out, _ = run(capsys, "plan", "--json")
    assert (code, json.loads(out)["stale_clients"]) == (0, ["wordpress"])
    _, out, _ = run(capsys, "plan")
    assert "stale Service Connect client: wordpress (tasks started before an endpoint they depend on)" in out


def test_the_region_is_resolved_as_the_aws_cli_resolves_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    config = tmp_path / "config"
    config.write_text("[default]\nregion = eu-west-1\n[profile bare]\n")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    both = {"AWS_REGION": "eu-north-1", "AWS_DEFAULT_REGION": "ap-south-1"}
    assert (aws_target(None, "us-west-2", both).region, aws_target(None, "us-west-2", both).region_source) == (
        "us-west-2",
        "--region",
    )
    assert aws_target(None, None, both).region == "eu-north-1"  # botocore alone would take AWS_DEFAULT_REGION
    assert aws_target(None, None, {"AWS_DEFAULT_REGION": "ap-south-1"}).region_source == "AWS_DEFAULT_REGION"
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    monkeypatch.delenv("AWS_REGION")
    target = aws_target(None, None, {})
    assert (target.region, target.region_source) == ("eu-west-1", "profile default")
    with pytest.raises(CommandError, match="no AWS region: give --region, or set AWS_REGION"):
        aws_target("bare", None, {})


# -- status ------------------------------------------------------------------------------------
class Quarantined(NamedTuple):
    service: SeededService
    sid: str  # the Cloud Map service it was taken out of
    instance_id: str
    written: dict[str, str]  # the attributes ECS had registered for it


@pytest.fixture
def quarantined(aws: FleetBuilder, lambda_context: FakeLambdaContext) -> Quarantined:
    """orders: four HEALTHY tasks, then the first UNHEALTHY: the poller takes it out and records it."""
    aws.create_cluster("prod")
    orders = aws.create_service("prod", "orders", discovery_names=["orders"])
    for arn in aws.start_tasks(orders, 4):
        aws.set_health(arn, "HEALTHY")
    sid, sick = orders.cloudmap_service_ids[0], task_id(orders.task_arns[0])
    [written] = [i["Attributes"] for i in aws.cloudmap.list_instances(ServiceId=sid)["Instances"] if i["Id"] == sick]
    aws.set_health(orders.task_arns[0], "UNHEALTHY")
    poll(lambda_context)
    assert sick not in aws.instance_ids(sid)
    assert set(records()) == {(sid, sick)}
    return Quarantined(orders, sid, sick, written)


def test_status_sums_up_a_deployed_stack_in_read_only_calls(
    aws: FleetBuilder,
    quarantined: Quarantined,
    capsys: pytest.CaptureFixture[str],
    mocker: Any,
) -> None:
    queue = deploy_stack(Enabled="true", DryRun="false")
    boto3.client("sqs").send_message(QueueUrl=queue, MessageBody="{}")
    cloudwatch = boto3.client("cloudwatch")
    cloudwatch.set_alarm_state(AlarmName=f"{STACK}-errors", StateValue="ALARM", StateReason="2 errors in 5 minutes")
    cloudwatch.put_metric_data(
        Namespace="CloudMapReactor",
        MetricData=[
            {"MetricName": "HealthScanCompleted", "Dimensions": [{"Name": "service", "Value": STACK}], "Value": 1}
        ],
    )
    calls = mocker.spy(BaseClient, "_make_api_call")

    code, out, _ = run(capsys, "status", "--stack", STACK, "--json")

    operations = {call.args[1] for call in calls.call_args_list}
    assert all(op.startswith(READS) for op in operations), operations
    report = json.loads(out)
    assert code == 1  # an alarm is in ALARM and a dead letter waits
    assert (report["context"]["account"], report["context"]["stack"], report["context"]["version"]) == (
        ACCOUNT,
        STACK,
        "9.9.9",
    )
    assert report["parameters"] == {"Enabled": "true", "DryRun": "false"}
    assert [q["instance_id"] for q in report["quarantined"]] == [quarantined.instance_id]
    assert report["dead_letter_messages"] == 1
    assert report["alarms"] == {f"{STACK}-errors": "ALARM", f"{STACK}-heartbeat": "OK"}
    assert report["alarms_in_alarm"] == [{"name": f"{STACK}-errors", "reason": "2 errors in 5 minutes"}]
    assert report["heartbeat_watched"] is True
    assert report["last_heartbeat"] is not None
    assert report["problems"] == []

    code, out, _ = run(capsys, "status", "--stack", STACK)
    assert out.startswith(f"account  {ACCOUNT}")
    assert "stack    cloudmap-reactor (CREATE_COMPLETE, version 9.9.9)" in out
    assert "switches     Enabled=true, DryRun=false" in out
    assert "quarantined  1 instance(s)" in out
    assert "dead letters 1 (cloudmap-reactor redrive replays them)" in out
    assert f"  ALARM {STACK}-errors: 2 errors in 5 minutes" in out


def test_status_needs_a_stack(aws: FleetBuilder, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit, match="2"):
        main(["status"])
    assert "the following arguments are required: --stack" in capsys.readouterr().err


# -- undo ----------------------------------------------------------------------------------------
def test_undo_is_a_dry_run_by_default_and_changes_nothing(
    aws: FleetBuilder,
    quarantined: Quarantined,
    capsys: pytest.CaptureFixture[str],
    mocker: Any,
) -> None:
    sid, sick, written = quarantined.sid, quarantined.instance_id, quarantined.written
    before = (aws.instance_ids(sid), records())
    calls = mocker.spy(BaseClient, "_make_api_call")

    code, out, err = run(capsys, "undo", "--ledger-table", ledger_table(), "--since", "30m", "--json")
    assert all(call.args[1].startswith(READS) for call in calls.call_args_list)

    assert code == 0
    report = json.loads(out)
    assert report["applied"] is False
    [entry] = report["instances"]
    assert (entry["outcome"], entry["instance_id"], entry["cloudmap_service_id"]) == ("would-restore", sick, sid)
    assert entry["attributes"] == written
    assert (report["context"]["account"], report["context"]["region"]) == (ACCOUNT, "us-east-1")
    assert "cannot tell whether the functions are stopped" in err
    _, out, _ = run(capsys, "undo", "--ledger-table", ledger_table(), "--since", "30m")
    assert f"would register again {sick} in {sid} (orders, taken out " in out
    assert "dry run: nothing was registered or deleted (--apply to act)" in out
    assert (aws.instance_ids(sid), records()) == before


def test_undo_apply_registers_exactly_the_recorded_attributes_and_deletes_the_record(
    aws: FleetBuilder,
    quarantined: Quarantined,
    capsys: pytest.CaptureFixture[str],
    mocker: Any,
) -> None:
    sid, sick, written = quarantined.sid, quarantined.instance_id, quarantined.written
    deploy_stack(Enabled="false")
    calls = mocker.spy(BaseClient, "_make_api_call")

    code, out, err = run(capsys, "undo", "--stack", STACK, "--since", "30m", "--apply", "--json")

    assert code == 0
    report = json.loads(out)
    assert report["counts"]["restored"] == 1
    [instance] = [i for i in aws.cloudmap.list_instances(ServiceId=sid)["Instances"] if i["Id"] == sick]
    assert instance["Attributes"] == written  # exactly what ECS had written, nothing invented
    assert records() == {}
    assert "WARNING" not in err  # Enabled=false: the poller will not take it out again
    writes = {call.args[1] for call in calls.call_args_list} - {
        op for call in calls.call_args_list if (op := call.args[1]).startswith(READS)
    }
    assert writes == {"RegisterInstance", "DeleteItem"}


def test_undo_never_registers_a_task_that_no_longer_runs(
    aws: FleetBuilder, quarantined: Quarantined, capsys: pytest.CaptureFixture[str]
) -> None:
    sid, gone = quarantined.sid, quarantined.instance_id
    aws.ecs.stop_task(cluster="prod", task=quarantined.service.task_arns[0], reason="replaced")
    deploy_stack()

    code, out, err = run(capsys, "undo", "--stack", STACK, "--since", "1h", "--apply")

    assert code == 0
    assert f"skipped {gone} in {sid}" in out
    assert "its task is not running (STOPPED, desired STOPPED): never registered" in out
    assert "1 of 1 quarantine record(s)" in out
    assert ": 1 skipped" in out
    assert gone not in aws.instance_ids(sid)
    assert set(records()) == {(sid, gone)}  # left for the poller to forget
    assert "the stack's functions are not disabled (Enabled=true)" in err


def test_undo_only_touches_the_time_range_asked_for(
    aws: FleetBuilder, quarantined: Quarantined, capsys: pytest.CaptureFixture[str]
) -> None:
    sid = quarantined.sid
    before = (aws.instance_ids(sid), records())

    code, out, _ = run(
        capsys, "undo", "--ledger-table", ledger_table(), "--from", "2020-01-01T00:00", "--to", "2020-01-02", "--apply"
    )
    assert code == 0
    assert "0 of 1 quarantine record(s) taken out from 2020-01-01T00:00:00Z to 2020-01-02T00:00:00Z" in out
    code, out, _ = run(capsys, "undo", "--ledger-table", ledger_table(), "--since", "30m", "--cluster", "staging")
    assert "0 of 1" in out
    assert (aws.instance_ids(sid), records()) == before


def test_undo_needs_a_time_range_and_a_ledger(aws: FleetBuilder, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit, match="2"):
        main(["undo"])
    assert "one of the arguments --since --from is required" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="2"):
        main(["undo", "--since", "soon"])
    assert "'soon' is not a duration like 90s, 30m, 2h or 1d" in capsys.readouterr().err
    code, _, err = run(capsys, "undo", "--since", "5m")
    assert code == 2
    assert "no quarantine ledger: give --stack" in err
    with pytest.raises(SystemExit, match="2"):
        main(["undo", "--since", "999999d"])
    assert "'999999d' is longer than 3650d" in capsys.readouterr().err
    code, _, err = run(capsys, "undo", "--from", "9999-12-31T23:59:59-12:00", "--apply")
    assert code == 2  # refused before any AWS call, not a traceback after the registrations
    assert "the time range cannot be shown as dates" in err


def test_redrive_report_names_account_region_and_stack_and_has_json(
    aws: FleetBuilder, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(redrive, "WAIT_SECONDS", 0)  # no long polling of the empty queue
    queue = deploy_stack()
    code, out, _ = run(capsys, "redrive", "--queue-url", queue, "--function-name", "reactor", "--dry-run", "--json")
    report = json.loads(out)
    assert code == 0
    assert (report["context"]["account"], report["context"]["region"], report["dry_run"]) == (
        ACCOUNT,
        "us-east-1",
        True,
    )
    assert report["would_replay"] == {}
    code, out, _ = run(capsys, "redrive", "--queue-url", queue, "--function-name", "reactor", "--dry-run")
    assert out.startswith(f"account  {ACCOUNT}")


def test_undo_registers_nothing_it_could_not_check_and_says_so(
    aws: FleetBuilder,
    quarantined: Quarantined,
    capsys: pytest.CaptureFixture[str],
    mocker: Any,
) -> None:
    sid, sick = quarantined.sid, quarantined.instance_id
    mocker.patch.object(EC2ContainerServiceBackend, "describe_tasks", side_effect=Denied)

    code, out, _ = run(capsys, "undo", "--ledger-table", ledger_table(), "--since", "30m", "--apply")

    assert code == 1
    assert f"FAILED {sick} in {sid}" in out
    assert "could not read ECS, so not registered: DescribeTasks" in out
    assert sick not in aws.instance_ids(sid)
    assert set(records()) == {(sid, sick)}


def test_status_shows_what_it_could_read_when_one_part_fails(
    aws: FleetBuilder, quarantined: Quarantined, capsys: pytest.CaptureFixture[str]
) -> None:
    queue = deploy_stack()
    boto3.client("sqs").delete_queue(QueueUrl=queue)

    code, out, err = run(capsys, "status", "--stack", STACK)

    assert code == 1
    assert "quarantined  1 instance(s)" in out
    assert "alarms       0 of 2 in ALARM" in out
    assert "could not read the dead-letter queue: " in out
    assert "WARNING: could not read the dead-letter queue" in err
