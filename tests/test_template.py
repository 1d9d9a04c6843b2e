"""template.yaml, checked offline: translated to CloudFormation by the SAM translator, then read.

Conditions (ClusterArns, AlarmEmail) are evaluated by a small intrinsic-function evaluator
for a given set of parameter values, so each test sees the resources CloudFormation would
create for that deployment, e.g. the rule's event pattern with and without ClusterArns.
The last test runs ``sam validate --lint`` (cfn-lint), which needs no AWS account either.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from samtranslator.yaml_helper import yaml_parse

from cloudmap_reactor import __version__
from cloudmap_reactor.config import Policy, defaults_by_parameter
from cloudmap_reactor.core.model import Reason
from cloudmap_reactor.handlers.reporting import DRY_RUN_REMOVED_MESSAGE, REMOVED_MESSAGE
from devtools import package

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / "template.yaml"

REGION = "us-east-1"
ACCOUNT = "123456789012"
STACK = "cloudmap-reactor-test"
SERVICE = STACK  # the service dimension and log key: the stack name by default (ServiceName)
CLUSTERS = (
    f"arn:aws:ecs:{REGION}:{ACCOUNT}:cluster/prod",
    f"arn:aws:ecs:{REGION}:{ACCOUNT}:cluster/staging",
)
WITH_CLUSTERS = {"ClusterArns": ",".join(CLUSTERS)}

REACTOR = "TaskStateReactorFunction"
POLLER = "HealthPollerFunction"
RULE = "TaskStateReactorFunctionTaskStopping"
SCHEDULE = "HealthPollerFunctionSchedule"
READINESS_RULE = "TaskStateReactorReadinessRule"
READINESS = {"ReadinessEvents": "true"}
LEDGER = "LedgerTable"
LEDGER_KEY = "LedgerTableKey"
# What CloudFormation names the table (Ref): the functions get a name, not the evaluator's <Ref:…>.
DEPLOYED_TABLE = f"{STACK}-{LEDGER}-1A2B3C4D5E6F7"

Json = Any
Params = Mapping[str, str]


# --------------------------------------------------------------------------------------------
# Translation and evaluation
# --------------------------------------------------------------------------------------------


@cache
def sam_template() -> dict[str, Json]:
    parsed: dict[str, Json] = yaml_parse(TEMPLATE.read_text(encoding="utf-8"))
    return parsed


@cache
def _translated(frozen_params: tuple[tuple[str, str], ...]) -> dict[str, Json]:
    # What `make package` does (the translator, like CloudFormation, takes code in S3 only: placeholders).
    return package.translate(sam_template(), dict(frozen_params), region=REGION)


def translated(params: Params | None = None) -> dict[str, Json]:
    return _translated(tuple(sorted((params or {}).items())))


class _NoValue:
    def __repr__(self) -> str:
        return "AWS::NoValue"


NO_VALUE = _NoValue()
_SUB_VARIABLE = re.compile(r"\$\{(!?)([^}]+)\}")


class Stack:
    """The translated template with parameters, pseudo parameters and conditions resolved.

    A Ref to a resource becomes ``<Ref:LogicalId>`` and a GetAtt ``<LogicalId.Attribute>``,
    so tests can tell what points where.
    """

    def __init__(self, params: Params | None = None) -> None:
        self.template = translated(params)
        declared = self.template["Parameters"]
        unknown = set(params or {}) - set(declared)
        assert not unknown, f"not parameters of the template: {unknown}"
        values = {name: str(spec.get("Default", "")) for name, spec in declared.items()}
        values.update(params or {})
        self.parameters = values
        self.refs: dict[str, str] = {
            **values,
            "AWS::Partition": "aws",
            "AWS::Region": REGION,
            "AWS::AccountId": ACCOUNT,
            "AWS::StackName": STACK,
            "AWS::URLSuffix": "amazonaws.com",
        }
        self.resources: dict[str, dict[str, Json]] = {
            logical_id: self.resolve(resource)
            for logical_id, resource in self.template["Resources"].items()
            if "Condition" not in resource or self.condition(resource["Condition"])
        }

    def condition(self, name: str) -> bool:
        value = self.resolve(self.template["Conditions"][name])
        assert isinstance(value, bool), f"condition {name} is not a boolean: {value!r}"
        return value

    def resolve(self, node: Json) -> Json:  # noqa: PLR0911, PLR0912
        if isinstance(node, list):
            return [item for item in (self.resolve(n) for n in node) if item is not NO_VALUE]
        if not isinstance(node, dict):
            return node
        if len(node) == 1:
            ((key, arg),) = node.items()
            if key == "Ref":
                if arg == "AWS::NoValue":
                    return NO_VALUE
                if self.template["Parameters"].get(arg, {}).get("Type") == "CommaDelimitedList":
                    return self.refs[arg].split(",")
                if arg in self.refs:
                    return self.refs[arg]
                assert arg in self.template["Resources"], f"Ref to unknown {arg}"
                return f"<Ref:{arg}>"
            if key == "Fn::GetAtt":
                resource, attribute = arg.split(".", 1) if isinstance(arg, str) else arg
                assert resource in self.template["Resources"], f"GetAtt of unknown {resource}"
                return f"<{resource}.{attribute}>"
            if key == "Fn::If":
                name, if_true, if_false = arg
                return self.resolve(if_true if self.condition(name) else if_false)
            if key == "Condition":
                return self.condition(arg)
            if key == "Fn::Equals":
                left, right = (self.resolve(a) for a in arg)
                return bool(left == right)
            if key == "Fn::Not":
                return not self.resolve(arg[0])
            if key == "Fn::And":
                return all(self.resolve(a) for a in arg)
            if key == "Fn::Or":
                return any(self.resolve(a) for a in arg)
            if key == "Fn::Split":
                separator, text = arg
                return str(self.resolve(text)).split(separator)
            if key == "Fn::Join":
                separator, items = arg
                return separator.join(str(i) for i in self.resolve(items))
            if key == "Fn::Select":
                index, items = arg
                return self.resolve(items)[int(self.resolve(index))]
            if key == "Fn::Sub":
                return self._sub(arg)
            assert not key.startswith("Fn::"), f"the evaluator does not know {key}"
        resolved = {k: self.resolve(v) for k, v in node.items()}
        return {k: v for k, v in resolved.items() if v is not NO_VALUE}

    def _sub(self, arg: Json) -> str:
        text, variables = (arg, {}) if isinstance(arg, str) else arg
        local = {name: self.resolve(value) for name, value in variables.items()}

        def replace(match: re.Match[str]) -> str:
            literal, name = match.groups()
            if literal:
                return "${" + name
            if name in local:
                return str(local[name])
            if name in self.refs:
                return self.refs[name]
            if "." in name:
                return str(self.resolve({"Fn::GetAtt": name}))
            return str(self.resolve({"Ref": name}))

        return _SUB_VARIABLE.sub(replace, text)

    def of_type(self, resource_type: str) -> dict[str, dict[str, Json]]:
        return {k: r for k, r in self.resources.items() if r["Type"] == resource_type}

    def properties(self, logical_id: str) -> dict[str, Json]:
        assert logical_id in self.resources, f"{logical_id} is not created ({sorted(self.resources)})"
        props: dict[str, Json] = self.resources[logical_id].get("Properties", {})
        return props


@pytest.fixture(scope="module")
def stack() -> Stack:
    return Stack()


@pytest.fixture(scope="module")
def scoped_stack() -> Stack:
    return Stack(WITH_CLUSTERS)


def sub(text: str) -> str:
    return text.replace("{region}", REGION).replace("{account}", ACCOUNT)


def as_deployed(env: Mapping[str, Json]) -> dict[str, str]:
    """A function's environment as Lambda passes it: text, with the ledger table's Ref resolved to a name."""
    return {name: DEPLOYED_TABLE if value == f"<Ref:{LEDGER}>" else str(value) for name, value in env.items()}


# --------------------------------------------------------------------------------------------
# Parameters and functions
# --------------------------------------------------------------------------------------------


def test_parameters_and_defaults() -> None:
    parameters = sam_template()["Parameters"]
    expected_defaults = {
        "ClusterArns": "",
        "DryRun": "false",
        "LogLevel": "INFO",
        "MetricsNamespace": "CloudMapReactor",
        "PollSchedule": "rate(1 minute)",
        "AlarmEmail": "",
        "LogRetentionDays": 30,
        "ServiceCacheTtlSeconds": 30,
    }
    for name, default in expected_defaults.items():
        assert name in parameters, name
        assert parameters[name]["Default"] == default, name
    assert parameters["DryRun"]["AllowedValues"] == ["true", "false"]
    assert parameters["LogLevel"]["AllowedValues"] == ["DEBUG", "INFO", "WARNING", "ERROR"]
    assert 30 in parameters["LogRetentionDays"]["AllowedValues"]
    assert set(parameters["LogRetentionDays"]["AllowedValues"]) <= {
        1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653,
    }  # fmt: skip


def test_template_defaults_are_the_policy_defaults() -> None:
    """Policy's field defaults are the only home of defaults: every template parameter that feeds one agrees."""
    parameters = sam_template()["Parameters"]
    for parameter, default in defaults_by_parameter().items():
        declared = parameters[parameter]["Default"]
        expected = {None: "auto", (): "", True: "true", False: "false"}.get(default, default)
        if isinstance(default, float | int) and not isinstance(default, bool):
            assert float(declared) == float(default), parameter
        else:
            assert str(declared) == str(expected), parameter
    # ...and what the template passes is what the functions parse back
    stack = Stack({})
    for logical_id in (REACTOR, POLLER):
        env = stack.properties(logical_id)["Environment"]["Variables"]
        parsed = Policy.from_env(as_deployed(env))
        for name in (
            "dry_run",
            "tag_scope",
            "min_healthy_percent",
            "poll_interval_seconds",
            "probe_failure_threshold",
            "probe_healthy_threshold",
            "return_on_recovery",
            "hold_until_healthy",
            "replace_after_seconds",
        ):
            env_name, _ = Policy.environment_of(name)
            if env_name in env:
                assert getattr(parsed, name) == getattr(Policy(), name), name


@pytest.mark.parametrize(
    ("value", "accepted"),
    [
        ("", True),
        (CLUSTERS[0], True),
        (",".join(CLUSTERS), True),
        ("arn:aws-us-gov:ecs:us-gov-west-1:123456789012:cluster/a_b-c", True),
        (f"{CLUSTERS[0]}, {CLUSTERS[1]}", False),  # a space would never match an event's clusterArn
        (f"{CLUSTERS[0]},", False),
        ("prod", False),
        (f"arn:aws:ecs:{REGION}:{ACCOUNT}:service/prod/web", False),
    ],
)
def test_cluster_arns_pattern(value: str, accepted: bool) -> None:
    pattern = sam_template()["Parameters"]["ClusterArns"]["AllowedPattern"]
    assert (re.fullmatch(pattern, value) is not None) is accepted
    if accepted:
        # Whatever CloudFormation lets through, the functions accept at cold start.
        assert Policy.from_env({"CLUSTER_ARNS": value}).cluster_arns == tuple(filter(None, value.split(",")))


def test_functions_share_one_makefile_built_package() -> None:
    template = sam_template()
    globals_function = template["Globals"]["Function"]
    for logical_id in (REACTOR, POLLER):
        resource = template["Resources"][logical_id]
        assert resource["Metadata"]["BuildMethod"] == "makefile"
        assert resource["Properties"].get("CodeUri", globals_function.get("CodeUri")) == "functions/"
    layer = template["Resources"]["DependenciesLayer"]
    assert layer["Type"] == "AWS::Serverless::LayerVersion"
    assert layer["Metadata"] == {"BuildMethod": "makefile", "BuildArchitecture": "arm64"}
    assert layer["Properties"]["ContentUri"] == "layer/"
    assert layer["Properties"]["CompatibleRuntimes"] == ["python3.13"]
    assert layer["Properties"]["CompatibleArchitectures"] == ["arm64"]


@pytest.mark.parametrize(
    ("logical_id", "handler", "timeout"),
    [
        (REACTOR, "cloudmap_reactor.handlers.task_state_change.lambda_handler", 30),
        (POLLER, "cloudmap_reactor.handlers.health_poller.lambda_handler", 60),
    ],
)
def test_function_settings(stack: Stack, logical_id: str, handler: str, timeout: int) -> None:
    function = stack.properties(logical_id)
    assert function["Handler"] == handler
    assert function["Runtime"] == "python3.13"
    assert function["Architectures"] == ["arm64"]
    assert function["Timeout"] == timeout
    assert int(function["MemorySize"]) == 256
    assert function["TracingConfig"] == {"Mode": "Active"}
    layers = function["Layers"]
    assert len(layers) == 1
    assert stack.resources[layers[0].removeprefix("<Ref:").removesuffix(">")]["Type"] == "AWS::Lambda::LayerVersion"


def test_environment(stack: Stack) -> None:
    shared = {
        "CLUSTER_ARNS": "",
        "DRY_RUN": "false",
        "LOG_LEVEL": "INFO",
        "POWERTOOLS_SERVICE_NAME": SERVICE,
        "POWERTOOLS_METRICS_NAMESPACE": "CloudMapReactor",
    }
    reactor_env = stack.properties(REACTOR)["Environment"]["Variables"]
    poller_env = stack.properties(POLLER)["Environment"]["Variables"]
    for env in (reactor_env, poller_env):
        assert shared.items() <= env.items()
        assert "POWERTOOLS_LOG_LEVEL" not in env
    assert reactor_env["SERVICE_CACHE_TTL_SECONDS"] == "30"
    assert poller_env["POLL_SCHEDULE"] == "rate(1 minute)"
    assert poller_env["POLL_INTERVAL_SECONDS"] == "10"
    assert poller_env["POLL_WINDOW_SECONDS"] == "auto"
    assert poller_env["ECS_READS_PER_SECOND"] == "10"
    assert poller_env["MIN_HEALTHY_PERCENT"] == "50"
    assert poller_env["RECONCILE_EVERY_PASSES"] == "6"
    assert poller_env["REDEPLOY_STALE_CLIENTS"] == poller_env["STALE_CHECK_ALL_ENDPOINTS"] == "false"
    assert reactor_env["TAG_SCOPE"] == poller_env["TAG_SCOPE"] == "opt-out"
    # Whatever the template passes, the poller accepts at cold start and polls for 50 s of 60.
    settings = Policy.from_env(as_deployed(poller_env))
    assert settings.poll_schedule_seconds == 60
    assert settings.poll_window_seconds is None


def test_environment_follows_parameters() -> None:
    stack = Stack(
        {
            **WITH_CLUSTERS,
            "DryRun": "true",
            "LogLevel": "DEBUG",
            "MetricsNamespace": "Custom/Reactor",
            "ServiceCacheTtlSeconds": "5",
            "PollIntervalSeconds": "5",
            "PollWindowSeconds": "0",
            "EcsReadsPerSecond": "0",
        }
    )
    for logical_id in (REACTOR, POLLER):
        env = stack.properties(logical_id)["Environment"]["Variables"]
        assert env["CLUSTER_ARNS"] == ",".join(CLUSTERS)
        assert env["DRY_RUN"] == "true"
        assert env["LOG_LEVEL"] == "DEBUG"
        assert env["POWERTOOLS_METRICS_NAMESPACE"] == "Custom/Reactor"
        assert env["POWERTOOLS_SERVICE_NAME"] == SERVICE
    assert stack.properties(REACTOR)["Environment"]["Variables"]["SERVICE_CACHE_TTL_SECONDS"] == "5"
    poller_env = stack.properties(POLLER)["Environment"]["Variables"]
    assert (poller_env["POLL_INTERVAL_SECONDS"], poller_env["POLL_WINDOW_SECONDS"]) == ("5", "0")
    assert poller_env["ECS_READS_PER_SECOND"] == "0"


@pytest.mark.parametrize("enabled", ["true", "false"])
def test_the_emergency_stop_reaches_both_functions(enabled: str) -> None:
    stack = Stack({"Enabled": enabled})
    for logical_id in (REACTOR, POLLER):
        env = stack.properties(logical_id)["Environment"]["Variables"]
        assert env["ENABLED"] == enabled
        assert Policy.from_env(as_deployed(env)).enabled is (enabled == "true")


def test_the_service_dimension_is_the_stack_name_unless_named() -> None:
    """Two stacks in one account never share a metric (and so an alarm): service is the stack's own."""
    for params, service in (({}, STACK), ({"ServiceName": "payments-reactor"}, "payments-reactor")):
        stack = Stack(params)
        for logical_id in (REACTOR, POLLER):
            assert stack.properties(logical_id)["Environment"]["Variables"]["POWERTOOLS_SERVICE_NAME"] == service
        for alarm_id, alarm in stack.of_type("AWS::CloudWatch::Alarm").items():
            dimensions = alarm["Properties"].get("Dimensions", [])
            assert all(d["Value"] == service for d in dimensions if d["Name"] == "service"), alarm_id
        custom = [m for m in dashboard_metrics(stack) if m[0] == "CloudMapReactor"]
        assert custom
        assert all(m[2:4] == ["service", service] for m in custom)


def test_poller_memory_is_a_parameter() -> None:
    assert Stack({"PollerMemorySize": "1769"}).properties(POLLER)["MemorySize"] == "1769"


VPC = {"ProbeSubnetIds": "subnet-0a,subnet-0b", "ProbeSecurityGroupIds": "sg-0probe"}
VPC_POLICY = "arn:aws:iam::aws:policy/service-role/AWSLambdaVPCAccessExecutionRole"


def test_http_probe_parameters_reach_the_poller(stack: Stack) -> None:
    poller_env = stack.properties(POLLER)["Environment"]["Variables"]
    assert {k: v for k, v in poller_env.items() if "PROBE" in k} == {
        "HTTP_PROBES": "false",
        "PROBE_CONNECT_TIMEOUT_SECONDS": "1",
        "PROBE_READ_TIMEOUT_SECONDS": "2",
        "PROBE_FAILURE_THRESHOLD": "3",
        "PROBE_CONCURRENCY": "32",
        "PROBE_HEALTHY_THRESHOLD": "2",
        "PROBE_ALLOW_LOOPBACK": "false",  # fixed: only events/env.json (sam local) turns it on
    }
    assert "HTTP_PROBES" not in stack.properties(REACTOR)["Environment"]["Variables"]


@pytest.mark.parametrize(
    "params",
    [{}, {"ProbeSubnetIds": "subnet-0a"}, {"ProbeSecurityGroupIds": "sg-0probe"}],
    ids=["none", "subnets-only", "groups-only"],
)
def test_without_subnets_and_groups_the_poller_stays_out_of_any_vpc_and_probes_nothing(params: Params) -> None:
    stack = Stack(params)
    assert "VpcConfig" not in stack.properties(POLLER)
    assert stack.properties(POLLER)["Environment"]["Variables"]["HTTP_PROBES"] == "false"
    assert VPC_POLICY not in role_of(stack, POLLER)["ManagedPolicyArns"]


def test_with_subnets_and_groups_the_poller_runs_in_the_vpc_and_probes() -> None:
    stack = Stack(VPC)
    poller = stack.properties(POLLER)
    assert poller["VpcConfig"] == {"SubnetIds": ["subnet-0a", "subnet-0b"], "SecurityGroupIds": ["sg-0probe"]}
    assert poller["Environment"]["Variables"]["HTTP_PROBES"] == "true"
    assert VPC_POLICY in role_of(stack, POLLER)["ManagedPolicyArns"]  # to create its network interfaces
    assert "VpcConfig" not in stack.properties(REACTOR)
    settings = Policy.from_env(as_deployed(poller["Environment"]["Variables"]))
    assert settings.http_probes


def test_both_functions_record_in_the_ledger(stack: Stack) -> None:
    reactor_env = stack.properties(REACTOR)["Environment"]["Variables"]
    poller_env = stack.properties(POLLER)["Environment"]["Variables"]
    for env in (reactor_env, poller_env):
        assert env["LEDGER_TABLE"] == f"<Ref:{LEDGER}>"
        assert env["HOLD_UNTIL_HEALTHY"] == "false"  # the reactor may hold a starting task too
        assert Policy.from_env(as_deployed(env)).ledger_table == DEPLOYED_TABLE
    assert poller_env["RETURN_ON_RECOVERY"] == "true"
    assert poller_env["PROBE_HEALTHY_THRESHOLD"] == "2"
    assert poller_env["REPLACE_AFTER_SECONDS"] == "0"
    for poller_only in ("RETURN_ON_RECOVERY", "PROBE_HEALTHY_THRESHOLD", "REPLACE_AFTER_SECONDS"):
        assert poller_only not in reactor_env, poller_only
    settings = Policy.from_env(as_deployed(poller_env))
    assert (settings.return_on_recovery, settings.probe_healthy_threshold) == (True, 2)
    assert (settings.hold_until_healthy, settings.replace_after_seconds) == (False, 0)


def test_quarantine_parameters_reach_the_functions() -> None:
    stack = Stack(
        {
            "ReturnOnRecovery": "false",
            "ProbeHealthyThreshold": "4",
            "HoldUntilHealthy": "true",
            "ReplaceAfterSeconds": "900",
        }
    )
    reactor = Policy.from_env(as_deployed(stack.properties(REACTOR)["Environment"]["Variables"]))
    poller = Policy.from_env(as_deployed(stack.properties(POLLER)["Environment"]["Variables"]))
    assert reactor.hold_until_healthy
    assert poller.hold_until_healthy
    assert (poller.return_on_recovery, poller.probe_healthy_threshold, poller.replace_after_seconds) == (False, 4, 900)


def test_quarantine_parameters_are_bounded_like_the_policy() -> None:
    parameters = sam_template()["Parameters"]
    reserved = parameters["PollerReservedConcurrency"]
    assert (reserved["Default"], reserved["MinValue"], reserved["MaxValue"]) == (0, 0, 1000)
    assert parameters["ReturnOnRecovery"]["AllowedValues"] == ["true", "false"]
    assert (parameters["DnsNamespaces"]["Default"], parameters["DnsNamespaces"]["AllowedValues"]) == (
        "false",
        ["true", "false"],
    )
    assert parameters["HoldUntilHealthy"]["AllowedValues"] == ["true", "false"]
    assert (parameters["ProbeHealthyThreshold"]["MinValue"], parameters["ProbeHealthyThreshold"]["MaxValue"]) == (1, 10)
    assert (parameters["ReplaceAfterSeconds"]["MinValue"], parameters["ReplaceAfterSeconds"]["MaxValue"]) == (0, 86400)


def test_ledger_table(stack: Stack) -> None:
    resource = stack.resources[LEDGER]
    assert resource["Type"] == "AWS::DynamoDB::Table"
    # The ledger is what lets quarantined instances be put back: it outlives the stack.
    assert resource["DeletionPolicy"] == resource["UpdateReplacePolicy"] == "Retain"
    table = stack.properties(LEDGER)
    assert table["BillingMode"] == "PAY_PER_REQUEST"
    assert table["KeySchema"] == [
        {"AttributeName": "pk", "KeyType": "HASH"},
        {"AttributeName": "sk", "KeyType": "RANGE"},
    ]
    assert sorted(table["AttributeDefinitions"], key=lambda a: a["AttributeName"]) == [
        {"AttributeName": "pk", "AttributeType": "S"},
        {"AttributeName": "sk", "AttributeType": "S"},
    ]
    assert "GlobalSecondaryIndexes" not in table
    assert "LocalSecondaryIndexes" not in table
    assert table["PointInTimeRecoverySpecification"] == {"PointInTimeRecoveryEnabled": True}
    assert table["TimeToLiveSpecification"] == {"AttributeName": "expires_at", "Enabled": True}
    assert "TableName" not in table, "a fixed table name clashes between two stacks"


def test_ledger_table_is_encrypted_with_its_own_retained_key(stack: Stack) -> None:
    sse = stack.properties(LEDGER)["SSESpecification"]
    assert sse == {"SSEEnabled": True, "SSEType": "KMS", "KMSMasterKeyId": f"<{LEDGER_KEY}.Arn>"}
    key = stack.resources[LEDGER_KEY]
    assert key["Type"] == "AWS::KMS::Key"
    # A retained table whose key was deleted could never be read again.
    assert key["DeletionPolicy"] == key["UpdateReplacePolicy"] == "Retain"
    assert key["Properties"]["EnableKeyRotation"] is True
    (statement,) = key["Properties"]["KeyPolicy"]["Statement"]
    assert statement["Principal"] == {"AWS": f"arn:aws:iam::{ACCOUNT}:root"}  # usable only as IAM allows


def test_poller_never_overlaps_and_is_never_retried(stack: Stack) -> None:
    # A lease item in the ledger keeps one poller acting at a time: nothing reserved by default,
    # so accounts at the 10-execution quota can deploy it.
    assert "ReservedConcurrentExecutions" not in stack.properties(POLLER)
    assert "dynamodb:PutItem" in grants(stack, POLLER)
    reserved = Stack({"PollerReservedConcurrency": "1"})
    assert reserved.properties(POLLER)["ReservedConcurrentExecutions"] == "1"
    assert "ReservedConcurrentExecutions" not in stack.properties(REACTOR)
    assert "ReservedConcurrentExecutions" not in reserved.properties(REACTOR)
    configs = [
        p for p in (r.get("Properties", {}) for r in stack.of_type("AWS::Lambda::EventInvokeConfig").values())
        if p["FunctionName"] == f"<Ref:{POLLER}>"
    ]  # fmt: skip
    assert len(configs) == 1
    assert configs[0]["MaximumRetryAttempts"] == 0


@pytest.mark.parametrize(("logical_id", "suffix"), [(REACTOR, "task-state-reactor"), (POLLER, "health-poller")])
def test_log_groups_have_retention(logical_id: str, suffix: str) -> None:
    stack = Stack({"LogRetentionDays": "90"})
    log_group_ref = stack.properties(logical_id)["LoggingConfig"]["LogGroup"]
    log_group_id = log_group_ref.removeprefix("<Ref:").removesuffix(">")
    log_group = stack.resources[log_group_id]
    assert log_group["Type"] == "AWS::Logs::LogGroup"
    assert log_group["Properties"]["RetentionInDays"] == "90"
    assert log_group["Properties"]["LogGroupName"] == f"/aws/lambda/{STACK}-{suffix}"


# --------------------------------------------------------------------------------------------
# Reactor: EventBridge rule, dead letters
# --------------------------------------------------------------------------------------------


def test_rule_pattern_takes_every_cluster_by_default(stack: Stack) -> None:
    rule = stack.properties(RULE)
    assert stack.resources[RULE]["Type"] == "AWS::Events::Rule"
    assert rule["EventPattern"] == {
        "source": ["aws.ecs"],
        "detail-type": ["ECS Task State Change"],
        "detail": {"desiredStatus": ["STOPPED"], "group": [{"prefix": "service:"}]},
    }
    assert rule.get("State", "ENABLED") == "ENABLED"


def test_rule_pattern_is_limited_to_the_given_clusters(scoped_stack: Stack) -> None:
    assert scoped_stack.properties(RULE)["EventPattern"] == {
        "source": ["aws.ecs"],
        "detail-type": ["ECS Task State Change"],
        "detail": {
            "desiredStatus": ["STOPPED"],
            "group": [{"prefix": "service:"}],
            "clusterArn": list(CLUSTERS),
        },
    }


def test_rule_target_retries_then_dead_letters(stack: Stack) -> None:
    (target,) = stack.properties(RULE)["Targets"]
    assert target["Arn"] == f"<{REACTOR}.Arn>"
    assert target["DeadLetterConfig"] == {"Arn": "<DeadLetterQueue.Arn>"}
    retry = target["RetryPolicy"]
    assert 0 < retry["MaximumRetryAttempts"] <= 185
    assert 60 <= retry["MaximumEventAgeInSeconds"] <= 86400
    permissions = [
        p["Properties"] for p in stack.of_type("AWS::Lambda::Permission").values()
        if p["Properties"]["FunctionName"] == f"<Ref:{REACTOR}>"
    ]  # fmt: skip
    assert permissions == [
        {
            "Action": "lambda:InvokeFunction",
            "FunctionName": f"<Ref:{REACTOR}>",
            "Principal": "events.amazonaws.com",
            "SourceArn": f"<{RULE}.Arn>",
        }
    ]


def test_reactor_failures_end_in_the_dead_letter_queue(stack: Stack) -> None:
    assert stack.properties(REACTOR)["DeadLetterConfig"] == {"TargetArn": "<DeadLetterQueue.Arn>"}
    configs = [
        r["Properties"] for r in stack.of_type("AWS::Lambda::EventInvokeConfig").values()
        if r["Properties"]["FunctionName"] == f"<Ref:{REACTOR}>"
    ]  # fmt: skip
    assert len(configs) == 1
    assert configs[0]["MaximumRetryAttempts"] == 2
    # An OnFailure destination, if one is ever added, must be the same queue.
    on_failure = configs[0].get("DestinationConfig", {}).get("OnFailure")
    assert on_failure in (None, {"Destination": "<DeadLetterQueue.Arn>"})
    # The function's role may send to the queue.
    sends = [s for s in role_statements(stack, REACTOR) if "sqs:SendMessage" in actions(s)]
    assert [s["Resource"] for s in sends] == ["<DeadLetterQueue.Arn>"]


def test_dead_letter_queue_is_encrypted_and_keeps_messages_14_days(stack: Stack) -> None:
    assert stack.resources["DeadLetterQueue"]["Type"] == "AWS::SQS::Queue"
    queue = stack.properties("DeadLetterQueue")
    assert queue.get("SqsManagedSseEnabled") is True or queue.get("KmsMasterKeyId")
    assert queue["MessageRetentionPeriod"] == 14 * 24 * 3600


def test_only_the_rule_may_send_dead_letters(stack: Stack) -> None:
    policies = [
        p["Properties"] for p in stack.of_type("AWS::SQS::QueuePolicy").values()
        if "<Ref:DeadLetterQueue>" in p["Properties"]["Queues"]
    ]  # fmt: skip
    assert len(policies) == 1
    statements = policies[0]["PolicyDocument"]["Statement"]
    allows = [s for s in statements if s["Effect"] == "Allow"]
    assert len(allows) == 1
    (allow,) = allows
    assert allow["Principal"] == {"Service": "events.amazonaws.com"}
    assert actions(allow) == ["sqs:SendMessage"]
    assert allow["Resource"] == "<DeadLetterQueue.Arn>"
    assert allow["Condition"] == {"ArnEquals": {"aws:SourceArn": f"<{RULE}.Arn>"}}


def reactor_permissions(stack: Stack) -> list[dict[str, Json]]:
    return [
        p["Properties"] for p in stack.of_type("AWS::Lambda::Permission").values()
        if p["Properties"]["FunctionName"] == f"<Ref:{REACTOR}>"
    ]  # fmt: skip


def test_no_readiness_rule_by_default(stack: Stack) -> None:
    assert READINESS_RULE not in stack.resources
    assert [p["SourceArn"] for p in reactor_permissions(stack)] == [f"<{RULE}.Arn>"]
    assert sam_template()["Parameters"]["ReadinessEvents"]["Default"] == "false"


@pytest.mark.parametrize("params", [{}, WITH_CLUSTERS], ids=["all-clusters", "given-clusters"])
def test_readiness_rule_sends_running_tasks_to_the_reactor(params: Params) -> None:
    stack = Stack({**params, **READINESS})
    assert stack.resources[READINESS_RULE]["Type"] == "AWS::Events::Rule"
    rule = stack.properties(READINESS_RULE)
    detail: dict[str, Json] = {
        "lastStatus": ["RUNNING"],
        "desiredStatus": ["RUNNING"],
        "group": [{"prefix": "service:"}],
    }
    if params:
        detail["clusterArn"] = list(CLUSTERS)
    assert rule["EventPattern"] == {"source": ["aws.ecs"], "detail-type": ["ECS Task State Change"], "detail": detail}
    assert rule.get("State", "ENABLED") == "ENABLED"
    # The stop rule is unchanged.
    assert stack.properties(RULE)["EventPattern"]["detail"]["desiredStatus"] == ["STOPPED"]


def test_readiness_rule_retries_and_dead_letters_like_the_stop_rule() -> None:
    stack = Stack(READINESS)
    (target,) = stack.properties(READINESS_RULE)["Targets"]
    (stop_target,) = stack.properties(RULE)["Targets"]
    assert target["Arn"] == f"<{REACTOR}.Arn>"
    assert target["RetryPolicy"] == stop_target["RetryPolicy"]
    assert target["DeadLetterConfig"] == stop_target["DeadLetterConfig"] == {"Arn": "<DeadLetterQueue.Arn>"}
    assert sorted(reactor_permissions(stack), key=lambda p: p["SourceArn"]) == [
        {
            "Action": "lambda:InvokeFunction",
            "FunctionName": f"<Ref:{REACTOR}>",
            "Principal": "events.amazonaws.com",
            "SourceArn": f"<{rule}.Arn>",
        }
        for rule in sorted((RULE, READINESS_RULE))
    ]
    (policy,) = (
        p["Properties"] for p in stack.of_type("AWS::SQS::QueuePolicy").values()
        if "<Ref:DeadLetterQueue>" in p["Properties"]["Queues"]
    )  # fmt: skip
    (allow,) = policy["PolicyDocument"]["Statement"]
    assert allow["Condition"] == {"ArnEquals": {"aws:SourceArn": [f"<{RULE}.Arn>", f"<{READINESS_RULE}.Arn>"]}}


# --------------------------------------------------------------------------------------------
# Poller schedule
# --------------------------------------------------------------------------------------------


def test_schedule(stack: Stack) -> None:
    assert stack.resources[SCHEDULE]["Type"] == "AWS::Scheduler::Schedule"
    schedule = stack.properties(SCHEDULE)
    assert schedule["ScheduleExpression"] == "rate(1 minute)"
    assert schedule["FlexibleTimeWindow"] == {"Mode": "OFF"}
    assert schedule.get("State", "ENABLED") == "ENABLED"
    assert "Name" not in schedule, "a fixed schedule name clashes between two stacks"
    target = schedule["Target"]
    assert target["Arn"] == f"<{POLLER}.Arn>"
    assert target["RetryPolicy"]["MaximumRetryAttempts"] == 0
    assert json.loads(target["Input"]) == {
        "id": "<aws.scheduler.execution-id>",
        "time": "<aws.scheduler.scheduled-time>",
        "schedule-arn": "<aws.scheduler.schedule-arn>",
        "attempt": "<aws.scheduler.attempt-number>",
    }
    role = stack.properties(target["RoleArn"].removeprefix("<").removesuffix(".Arn>"))
    statements = [s for p in role["Policies"] for s in p["PolicyDocument"]["Statement"]]
    assert [(actions(s), s["Resource"]) for s in statements] == [(["lambda:InvokeFunction"], f"<{POLLER}.Arn>")]


def test_schedule_expression_is_a_parameter() -> None:
    stack = Stack({"PollSchedule": "rate(2 minutes)"})
    assert stack.properties(SCHEDULE)["ScheduleExpression"] == "rate(2 minutes)"


# --------------------------------------------------------------------------------------------
# IAM
# --------------------------------------------------------------------------------------------


def actions(statement: Mapping[str, Json]) -> list[str]:
    value = statement.get("Action", [])
    return [value] if isinstance(value, str) else list(value)


def role_of(stack: Stack, function: str) -> dict[str, Json]:
    role_arn = stack.properties(function)["Role"]
    return stack.properties(role_arn.removeprefix("<").removesuffix(".Arn>"))


def role_statements(stack: Stack, function: str) -> list[dict[str, Json]]:
    role = role_of(stack, function)
    return [s for policy in role.get("Policies", []) for s in policy["PolicyDocument"]["Statement"]]


def all_policy_statements(stack: Stack) -> Iterator[tuple[str, dict[str, Json]]]:
    for logical_id, resource in stack.resources.items():
        props = resource.get("Properties", {})
        if resource["Type"] == "AWS::IAM::Role":
            for policy in props.get("Policies", []):
                for statement in policy["PolicyDocument"]["Statement"]:
                    yield logical_id, statement
        elif resource["Type"] in {"AWS::IAM::Policy", "AWS::IAM::ManagedPolicy"}:
            for statement in props["PolicyDocument"]["Statement"]:
                yield logical_id, statement


@pytest.mark.parametrize("params", [{}, WITH_CLUSTERS], ids=["all-clusters", "given-clusters"])
def test_no_wildcard_actions_anywhere(params: Params) -> None:
    stack = Stack(params)
    statements = list(all_policy_statements(stack))
    assert statements
    for logical_id, statement in statements:
        assert "NotAction" not in statement, logical_id
        assert statement["Effect"] == "Allow", logical_id
        for action in actions(statement):
            assert re.fullmatch(r"[a-z0-9-]+:[A-Za-z0-9]+", action), (
                f"{logical_id}: {action!r} is not one explicit action"
            )


def test_roles_use_no_managed_policies_beyond_logs_and_xray(stack: Stack) -> None:
    for function in (REACTOR, POLLER):
        assert sorted(role_of(stack, function)["ManagedPolicyArns"]) == [
            "arn:aws:iam::aws:policy/AWSXrayWriteOnlyAccess",
            "arn:aws:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole",
        ]


ECS_SERVICES = sub("arn:aws:ecs:{region}:{account}:service/*")
ECS_TASKS = sub("arn:aws:ecs:{region}:{account}:task/*")
CLOUDMAP_SERVICES = sub("arn:aws:servicediscovery:{region}:{account}:service/*")
LEDGER_ACTIONS = ("dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:DeleteItem", "dynamodb:Query")
REACTOR_LEDGER_ACTIONS = ("dynamodb:PutItem", "dynamodb:DeleteItem", "dynamodb:Query")  # no streaks, no lease
VIA_DYNAMODB = {"StringEquals": {"kms:ViaService": f"dynamodb.{REGION}.amazonaws.com"}}
LEDGER_KEY_GRANTS: dict[str, list[tuple[Json, Json]]] = {
    "kms:Decrypt": [(f"<{LEDGER_KEY}.Arn>", VIA_DYNAMODB)],
    "kms:GenerateDataKey": [(f"<{LEDGER_KEY}.Arn>", VIA_DYNAMODB)],
}
LEDGER_GRANTS: dict[str, list[tuple[Json, Json]]] = {
    **{action: [(f"<{LEDGER}.Arn>", None)] for action in LEDGER_ACTIONS},
    **LEDGER_KEY_GRANTS,
}
ONLY_THOSE_CLUSTERS = {"ArnEquals": {"ecs:cluster": list(CLUSTERS)}}


def grants(stack: Stack, function: str) -> dict[str, list[tuple[Json, Json]]]:
    """action -> [(Resource, Condition)] over the function role's inline policies."""
    result: dict[str, list[tuple[Json, Json]]] = {}
    for statement in role_statements(stack, function):
        for action in actions(statement):
            result.setdefault(action, []).append((statement["Resource"], statement.get("Condition")))
    return result


@pytest.mark.parametrize("params", [{}, WITH_CLUSTERS], ids=["all-clusters", "given-clusters"])
def test_reactor_permissions(params: Params) -> None:
    scoped = ONLY_THOSE_CLUSTERS if params else None
    assert grants(Stack(params), REACTOR) == {
        "ecs:DescribeServices": [(ECS_SERVICES, scoped)],
        "servicediscovery:DeregisterInstance": [(CLOUDMAP_SERVICES, None)],
        "servicediscovery:GetOperation": [("*", None)],  # no resource type: "*" is what IAM accepts
        "sqs:SendMessage": [("<DeadLetterQueue.Arn>", None)],
    }


def test_the_reactor_reads_a_started_tasks_service_only_with_readiness_events() -> None:
    readiness = {"ReadinessEvents": "true"}
    assert not {"ecs:ListTasks", "servicediscovery:RegisterInstance"} & grants(Stack({}), REACTOR).keys()
    granted = grants(Stack(readiness), REACTOR)
    assert granted["ecs:ListTasks"] == [("*", None)]
    assert granted["ecs:DescribeTasks"] == [(ECS_TASKS, None)]
    assert granted["servicediscovery:ListInstances"] == [(CLOUDMAP_SERVICES, None)]
    assert granted["servicediscovery:RegisterInstance"] == [(CLOUDMAP_SERVICES, None)]
    # The ledger: records of the tasks it holds out (no streaks, no lease: those are the poller's).
    assert {a: w for a, w in granted.items() if a.startswith(("dynamodb:", "kms:"))} == {
        **{action: [(f"<{LEDGER}.Arn>", None)] for action in REACTOR_LEDGER_ACTIONS},
        **LEDGER_KEY_GRANTS,
    }
    scoped = grants(Stack({**WITH_CLUSTERS, **readiness}), REACTOR)
    assert scoped["ecs:ListTasks"] == [("*", ONLY_THOSE_CLUSTERS)]
    assert scoped["ecs:DescribeTasks"] == [(ECS_TASKS, ONLY_THOSE_CLUSTERS)]


def test_poller_permissions_for_every_cluster(stack: Stack) -> None:
    assert grants(stack, POLLER) == {
        "ecs:ListClusters": [("*", None)],
        "ecs:ListServices": [("*", None)],
        "ecs:ListTasks": [("*", None)],
        "ecs:DescribeServices": [([ECS_SERVICES, ECS_TASKS], None)],
        "ecs:DescribeTasks": [([ECS_SERVICES, ECS_TASKS], None)],
        "ecs:DescribeTaskDefinition": [("*", None)],  # no resource-level permissions
        "ecs:UpdateService": [(ECS_SERVICES, TAGGED_FOR_REDEPLOY)],
        "servicediscovery:DeregisterInstance": [(CLOUDMAP_SERVICES, None)],
        "servicediscovery:ListInstances": [(CLOUDMAP_SERVICES, None)],
        "servicediscovery:GetService": [(CLOUDMAP_SERVICES, None)],
        "servicediscovery:RegisterInstance": [(CLOUDMAP_SERVICES, None)],
        **LEDGER_GRANTS,
        "servicediscovery:GetOperation": [("*", None)],
    }


TAGGED_FOR_REDEPLOY = {"StringEqualsIgnoreCase": {"aws:ResourceTag/cloudmap-reactor:redeploy-stale": "true"}}


def test_poller_may_redeploy_every_service_only_when_healing_is_on() -> None:
    # Off: only services tagged cloudmap-reactor:redeploy-stale=true, the only ones it heals then.
    assert grants(Stack({}), POLLER)["ecs:UpdateService"] == [(ECS_SERVICES, TAGGED_FOR_REDEPLOY)]
    assert grants(Stack(WITH_CLUSTERS), POLLER)["ecs:UpdateService"] == [
        (ECS_SERVICES, {**TAGGED_FOR_REDEPLOY, **ONLY_THOSE_CLUSTERS})
    ]
    heal_all = {"RedeployStaleClients": "true"}
    assert grants(Stack(heal_all), POLLER)["ecs:UpdateService"] == [(ECS_SERVICES, None)]
    assert grants(Stack({**heal_all, **WITH_CLUSTERS}), POLLER)["ecs:UpdateService"] == [
        (ECS_SERVICES, ONLY_THOSE_CLUSTERS)
    ]
    assert "ecs:UpdateService" not in grants(Stack(heal_all), REACTOR)


def test_poller_permissions_for_given_clusters(scoped_stack: Stack) -> None:
    only_those_clusters = ONLY_THOSE_CLUSTERS
    assert grants(scoped_stack, POLLER) == {
        "ecs:ListServices": [("*", only_those_clusters)],
        "ecs:ListTasks": [("*", only_those_clusters)],
        "ecs:DescribeServices": [([ECS_SERVICES, ECS_TASKS], only_those_clusters)],
        "ecs:DescribeTasks": [([ECS_SERVICES, ECS_TASKS], only_those_clusters)],
        "ecs:DescribeTaskDefinition": [("*", None)],
        "ecs:UpdateService": [(ECS_SERVICES, {**TAGGED_FOR_REDEPLOY, **only_those_clusters})],
        "servicediscovery:DeregisterInstance": [(CLOUDMAP_SERVICES, None)],
        "servicediscovery:ListInstances": [(CLOUDMAP_SERVICES, None)],
        "servicediscovery:GetService": [(CLOUDMAP_SERVICES, None)],
        "servicediscovery:RegisterInstance": [(CLOUDMAP_SERVICES, None)],
        **LEDGER_GRANTS,
        "servicediscovery:GetOperation": [("*", None)],
    }


def test_clusters_found_by_tag_are_read_with_describe_clusters() -> None:
    tagged = {"ClusterTag": "team=payments"}
    for function in (REACTOR, POLLER):
        assert "ecs:DescribeClusters" not in grants(Stack({}), function)
        clusters = f"arn:aws:ecs:{REGION}:{ACCOUNT}:cluster/*"
        assert grants(Stack(tagged), function)["ecs:DescribeClusters"] == [(clusters, None)]
    assert grants(Stack(tagged), POLLER)["ecs:ListClusters"] == [("*", None)]
    assert "ecs:ListClusters" not in grants(Stack(tagged), REACTOR)
    for function in (REACTOR, POLLER):
        env = Stack(tagged).properties(function)["Environment"]["Variables"]
        assert Policy.from_env(as_deployed(env)).cluster_tag_pair == ("team", "payments")


def test_poller_may_stop_tasks_only_when_replacing_quarantined_ones() -> None:
    assert "ecs:StopTask" not in grants(Stack({}), POLLER)
    assert "ecs:StopTask" not in grants(Stack(WITH_CLUSTERS), POLLER)
    replacing = {"ReplaceAfterSeconds": "600"}
    assert grants(Stack(replacing), POLLER)["ecs:StopTask"] == [(ECS_TASKS, None)]
    only_those_clusters = {"ArnEquals": {"ecs:cluster": list(CLUSTERS)}}
    assert grants(Stack({**WITH_CLUSTERS, **replacing}), POLLER)["ecs:StopTask"] == [(ECS_TASKS, only_those_clusters)]
    assert "ecs:StopTask" not in grants(Stack(replacing), REACTOR)


HOSTED_ZONES = "arn:aws:route53:::hostedzone/*"
HEALTH_CHECKS = "arn:aws:route53:::healthcheck/*"
# What Cloud Map does in Route 53 with the caller's rights (AWS Cloud Map API permissions reference).
DEREGISTER_IN_DNS = {
    "route53:ChangeResourceRecordSets": [(HOSTED_ZONES, None)],
    "route53:GetHealthCheck": [(HEALTH_CHECKS, None)],
    "route53:UpdateHealthCheck": [(HEALTH_CHECKS, None)],
    "route53:DeleteHealthCheck": [(HEALTH_CHECKS, None)],
}
REGISTER_IN_DNS = {**DEREGISTER_IN_DNS, "route53:CreateHealthCheck": [("*", None)]}  # no resource-level permissions


def route53(grants: Mapping[str, Json]) -> dict[str, Json]:
    return {action: where for action, where in grants.items() if action.startswith("route53:")}


@pytest.mark.parametrize("params", [{}, WITH_CLUSTERS], ids=["all-clusters", "given-clusters"])
def test_route53_only_for_dns_namespaces(params: Params) -> None:
    stack, dns = Stack(params), Stack({**params, "DnsNamespaces": "true"})
    assert route53(grants(stack, REACTOR)) == route53(grants(stack, POLLER)) == {}
    assert route53(grants(dns, REACTOR)) == DEREGISTER_IN_DNS  # without readiness events the reactor only deregisters
    assert route53(grants(Stack({**params, **READINESS, "DnsNamespaces": "true"}), REACTOR)) == REGISTER_IN_DNS
    assert route53(grants(dns, POLLER)) == REGISTER_IN_DNS  # the poller registers recovered tasks again
    for function in (REACTOR, POLLER):  # nothing else changes
        others = {a: w for a, w in grants(dns, function).items() if not a.startswith("route53:")}
        assert others == grants(stack, function), function
    assert not any(a.startswith("ec2:") for f in (REACTOR, POLLER) for a in grants(dns, f))


@pytest.mark.parametrize("params", [{}, WITH_CLUSTERS], ids=["all-clusters", "given-clusters"])
def test_the_ledger_is_reached_item_by_item_and_only_that_table(params: Params) -> None:
    stack = Stack(params)
    seen = set()
    for logical_id, statement in all_policy_statements(stack):
        for action in actions(statement):
            if action.startswith("dynamodb:"):
                assert action in LEDGER_ACTIONS, f"{logical_id}: {action}"  # no Scan, no table changes
                assert statement["Resource"] == f"<{LEDGER}.Arn>", logical_id
                seen.add(logical_id)
            if action.startswith("kms:"):
                assert statement["Resource"] == f"<{LEDGER_KEY}.Arn>", logical_id
                assert statement["Condition"] == VIA_DYNAMODB, logical_id
    assert seen == {"HealthPollerRole"}, "without readiness events, only the poller's role uses the ledger"
    readiness = Stack({**params, **READINESS})
    assert {i for i, s in all_policy_statements(readiness) for a in actions(s) if a.startswith("dynamodb:")} == {
        "HealthPollerRole",
        f"{REACTOR}Role",  # SAM's role of the reactor
    }


# --------------------------------------------------------------------------------------------
# Alarms, topic, dashboard, outputs
# --------------------------------------------------------------------------------------------

NAMESPACE = "Custom/CloudMapReactor"
SERVICE_DIMENSION = [{"Name": "service", "Value": SERVICE}]
# Errors must persist: 3 of the last 5 minutes, never a single failed call.
PERSISTENT = {"Period": 60, "EvaluationPeriods": 5, "DatapointsToAlarm": 3}
ONE_MINUTE = {"Period": 60, "EvaluationPeriods": 1, "DatapointsToAlarm": 1}
ABOVE_ZERO = {"Threshold": 0, "ComparisonOperator": "GreaterThanThreshold", "TreatMissingData": "notBreaching"}
PAGE, WARNING = "<Ref:AlarmTopic>", "<Ref:WarningTopic>"
ALARMS: dict[str, dict[str, Json]] = {
    "HealthPollerHeartbeatAlarm": {
        "Namespace": NAMESPACE,
        "MetricName": "HealthScanCompleted",
        "Dimensions": SERVICE_DIMENSION,
        "Statistic": "Sum",
        "Period": 60,
        "EvaluationPeriods": 3,
        "DatapointsToAlarm": 3,
        "Threshold": 1,
        "ComparisonOperator": "LessThanThreshold",
        "TreatMissingData": "breaching",
    },
    "DeregistrationErrorsAlarm": {
        "Namespace": NAMESPACE,
        "MetricName": "DeregistrationErrors",
        "Dimensions": SERVICE_DIMENSION,
        "Statistic": "Sum",
        **PERSISTENT,
        **ABOVE_ZERO,
    },
    "FailOpenAlarm": {
        "Namespace": NAMESPACE,
        "MetricName": "FailOpenActivated",
        "Dimensions": SERVICE_DIMENSION,
        "Statistic": "Sum",
        **PERSISTENT,
        **ABOVE_ZERO,
    },
    "StaleDependencyAlarm": {
        "Namespace": NAMESPACE,
        "MetricName": "StaleDependencyTasks",
        "Dimensions": SERVICE_DIMENSION,
        "Statistic": "Maximum",
        "Period": 60,
        "EvaluationPeriods": "15",  # a parameter (StaleAlarmMinutes), as CloudFormation passes it
        "DatapointsToAlarm": "15",
        **ABOVE_ZERO,
    },
    "TaskStateReactorErrorsAlarm": {
        "Namespace": "AWS/Lambda",
        "MetricName": "Errors",
        "Dimensions": [{"Name": "FunctionName", "Value": f"<Ref:{REACTOR}>"}],
        "Statistic": "Sum",
        **PERSISTENT,
        **ABOVE_ZERO,
    },
    "HealthPollerErrorsAlarm": {
        "Namespace": "AWS/Lambda",
        "MetricName": "Errors",
        "Dimensions": [{"Name": "FunctionName", "Value": f"<Ref:{POLLER}>"}],
        "Statistic": "Sum",
        **PERSISTENT,
        **ABOVE_ZERO,
    },
    "RestoreErrorsAlarm": {
        "Namespace": NAMESPACE,
        "MetricName": "RestoreErrors",
        "Dimensions": SERVICE_DIMENSION,
        "Statistic": "Sum",
        **PERSISTENT,
        **ABOVE_ZERO,
    },
    "QuarantineAgeAlarm": {
        "Namespace": NAMESPACE,
        "MetricName": "OldestQuarantineSeconds",
        "Dimensions": SERVICE_DIMENSION,
        "Statistic": "Maximum",
        **ONE_MINUTE,  # the threshold is already an age
        "Threshold": "1800",  # a parameter (QuarantineAlarmSeconds), as CloudFormation passes it
        "ComparisonOperator": "GreaterThanThreshold",
        "TreatMissingData": "notBreaching",
    },
    "DeadLetterQueueAlarm": {
        "Namespace": "AWS/SQS",
        "MetricName": "ApproximateNumberOfMessagesVisible",
        "Dimensions": [{"Name": "QueueName", "Value": "<DeadLetterQueue.QueueName>"}],
        "Statistic": "Maximum",
        **ONE_MINUTE,  # a dead letter stays until someone redrives it
        **ABOVE_ZERO,
    },
    "EmergencyStopAlarm": {
        "Namespace": NAMESPACE,
        "MetricName": "Disabled",
        "Dimensions": SERVICE_DIMENSION,
        "Statistic": "Sum",
        **ONE_MINUTE,
        **ABOVE_ZERO,
    },
    "AccessDeniedAlarm": {
        "Namespace": NAMESPACE,
        "MetricName": "AccessDenied",  # the total, without the Reason (operation) dimension
        "Dimensions": SERVICE_DIMENSION,
        "Statistic": "Sum",
        **ONE_MINUTE,  # a missing permission never heals by retrying
        **ABOVE_ZERO,
    },
    "ClusterMissingAlarm": {
        "Namespace": NAMESPACE,
        "MetricName": "ClusterMissing",
        "Dimensions": SERVICE_DIMENSION,
        "Statistic": "Sum",
        **ONE_MINUTE,  # counted once per container: a single datapoint is all there is
        **ABOVE_ZERO,
    },
}
# Someone is needed now only when clients reach tasks that should be out, or nothing is watching.
PAGES = {"HealthPollerHeartbeatAlarm", "DeregistrationErrorsAlarm"}
README = ROOT / "README.md"


@pytest.fixture(scope="module")
def namespaced_stack() -> Stack:
    return Stack({"MetricsNamespace": NAMESPACE})


def test_exactly_the_expected_alarms(namespaced_stack: Stack) -> None:
    assert set(namespaced_stack.of_type("AWS::CloudWatch::Alarm")) == set(ALARMS)


@pytest.mark.parametrize("alarm_id", sorted(ALARMS))
def test_alarm(namespaced_stack: Stack, alarm_id: str) -> None:
    alarm = namespaced_stack.properties(alarm_id)
    for key, value in ALARMS[alarm_id].items():
        assert alarm[key] == value, f"{alarm_id}.{key}"
    topic = PAGE if alarm_id in PAGES else WARNING
    assert alarm["AlarmActions"] == alarm["OKActions"] == [topic]
    assert alarm.get("ActionsEnabled", True) is True
    assert alarm["AlarmDescription"].startswith("[page] " if topic == PAGE else "[warning] ")
    assert len(alarm["AlarmDescription"]) <= 1024  # CloudWatch's limit


def github_anchors(markdown: str) -> set[str]:
    """The anchors GitHub gives the headings of a Markdown file (lowercase, punctuation dropped, spaces to -)."""
    headings = re.findall(r"^#{1,6} (.+)$", markdown, flags=re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


@pytest.mark.parametrize("base", [None, "https://wiki.example.com/cloudmap-reactor"])
def test_every_alarm_links_a_runbook_section_of_the_readme(base: str | None) -> None:
    stack = Stack({"RunbookBaseUrl": base} if base else {})
    anchors = github_anchors(README.read_text(encoding="utf-8"))
    for alarm_id, alarm in stack.of_type("AWS::CloudWatch::Alarm").items():
        link = re.search(r"Runbook: (\S+)#([\w-]+)$", alarm["Properties"]["AlarmDescription"])
        assert link, alarm_id
        assert link.group(1) == (base or "README.md"), alarm_id
        assert link.group(2) in anchors, f"{alarm_id}: README has no section #{link.group(2)}"
    (text,) = (w for w in dashboard_widgets(stack) if w["type"] == "text")
    linked = re.findall(r"\]\((\S+?)#([\w-]+)\)", text["properties"]["markdown"])
    assert linked
    assert {b for b, _ in linked} == {base or "README.md"}
    assert {a for _, a in linked} <= anchors


def test_quarantine_alarm_threshold_is_a_parameter() -> None:
    parameter = sam_template()["Parameters"]["QuarantineAlarmSeconds"]
    assert (parameter["Default"], parameter["MinValue"], parameter["MaxValue"]) == (1800, 60, 86400)
    assert Stack({"QuarantineAlarmSeconds": "600"}).properties("QuarantineAgeAlarm")["Threshold"] == "600"


@pytest.mark.parametrize("topic_id", ["AlarmTopic", "WarningTopic"])
def test_alarm_topics_are_encrypted_with_a_key_cloudwatch_may_use(stack: Stack, topic_id: str) -> None:
    topic = stack.properties(topic_id)
    key_ref = topic["KmsMasterKeyId"]
    # CloudWatch cannot publish to a topic under the AWS managed key alias/aws/sns.
    assert key_ref.startswith("<Ref:"), "the alarm topic needs a customer managed key"
    key = stack.properties(key_ref.removeprefix("<Ref:").removesuffix(">"))
    assert key["EnableKeyRotation"] is True
    cloudwatch = [s for s in key["KeyPolicy"]["Statement"] if s["Principal"] == {"Service": "cloudwatch.amazonaws.com"}]
    assert len(cloudwatch) == 1
    assert sorted(actions(cloudwatch[0])) == ["kms:Decrypt", "kms:GenerateDataKey*"]

    (policy,) = (
        p["Properties"] for p in stack.of_type("AWS::SNS::TopicPolicy").values()
        if p["Properties"]["Topics"] == [f"<Ref:{topic_id}>"]
    )  # fmt: skip
    (publish,) = policy["PolicyDocument"]["Statement"]
    assert publish["Effect"] == "Allow"
    assert publish["Principal"] == {"Service": "cloudwatch.amazonaws.com"}
    assert actions(publish) == ["sns:Publish"]
    assert publish["Resource"] == f"<Ref:{topic_id}>"


def test_email_subscriptions_only_with_an_address(stack: Stack) -> None:
    assert stack.of_type("AWS::SNS::Subscription") == {}
    subscribed = Stack({"AlarmEmail": "oncall@example.com", "WarningEmail": "team@example.com"})
    subscriptions = [s["Properties"] for s in subscribed.of_type("AWS::SNS::Subscription").values()]
    assert sorted(subscriptions, key=str) == sorted(
        [
            {"TopicArn": PAGE, "Protocol": "email", "Endpoint": "oncall@example.com"},
            {"TopicArn": WARNING, "Protocol": "email", "Endpoint": "team@example.com"},
        ],
        key=str,
    )


def dashboard_widgets(stack: Stack) -> list[dict[str, Json]]:
    (dashboard,) = stack.of_type("AWS::CloudWatch::Dashboard").values()
    widgets: list[dict[str, Json]] = json.loads(dashboard["Properties"]["DashboardBody"])["widgets"]
    return widgets


def dashboard_metrics(stack: Stack) -> list[list[Json]]:
    return [m for w in dashboard_widgets(stack) if w["type"] == "metric" for m in w["properties"]["metrics"]]


def test_dashboard_shows_every_metric(namespaced_stack: Stack) -> None:
    metrics = dashboard_metrics(namespaced_stack)
    custom = {tuple(m[1:-1] if isinstance(m[-1], dict) else m[1:]) for m in metrics if m[0] == NAMESPACE}
    for removal in Reason:  # dry run too: Reconciled is counted in a dry run like the others
        assert ("TasksDeregistered", "service", SERVICE, "Reason", removal.value) in custom
        assert ("DryRunDeregistrations", "service", SERVICE, "Reason", removal.value) in custom
    for reason in ("Unhealthy", "ProbeFailed", "NotReady"):
        assert ("TasksRestored", "service", SERVICE, "Reason", reason) in custom
    for reason in ("Throttled", "Deadline", "Error"):
        assert ("ClusterSkipped", "service", SERVICE, "Reason", reason) in custom
    for name in (
        "DeregistrationErrors",
        "InvalidEvents",
        "HealthScanDuration",
        "HealthScanCompleted",
        "UnhealthyTasksFound",
        "FailOpenActivated",
        "OrphanInstances",
        "StaleDependencyTasks",
        "ClientsRedeployed",
        "ProbeFailures",
        "ProbeDuration",
        "InvalidProbeTargets",
        "QuarantinedInstances",
        "OldestQuarantineSeconds",
        "RestoreErrors",
        "TasksReplaced",
        "Disabled",
    ):
        assert (name, "service", SERVICE) in custom, name
    gauges = {m[1]: m[-1].get("stat") for m in metrics if m[1] in {"QuarantinedInstances", "OldestQuarantineSeconds"}}
    assert set(gauges.values()) <= {None, "Maximum"}, "per-pass gauges are read as their maximum"
    probe_stats = {m[-1].get("stat") for m in metrics if m[1] == "ProbeDuration"}
    assert probe_stats == {"SampleCount", "p50", "p99", "Maximum"}
    duration_stats = {m[-1].get("stat") for m in metrics if m[1] == "HealthScanDuration"}
    assert duration_stats == {"Average", "Maximum"}
    for lambda_metric in ("Errors", "Throttles", "Duration"):
        functions = {m[3] for m in metrics if m[:2] == ["AWS/Lambda", lambda_metric]}
        assert functions == {f"<Ref:{REACTOR}>", f"<Ref:{POLLER}>"}, lambda_metric
    assert ["AWS/SQS", "ApproximateNumberOfMessagesVisible", "QueueName", "<DeadLetterQueue.QueueName>"] in [
        m[:4] for m in metrics
    ]
    assert all(m[0] in {NAMESPACE, "AWS/Lambda", "AWS/SQS"} for m in metrics), "namespace must follow the parameter"


def test_dashboard_shows_every_alarm_on_top_and_the_quarantine_threshold(namespaced_stack: Stack) -> None:
    widgets = dashboard_widgets(namespaced_stack)
    (alarms,) = (w for w in widgets if w["type"] == "alarm")
    assert sorted(alarms["properties"]["alarms"]) == sorted(f"<{alarm_id}.Arn>" for alarm_id in ALARMS)
    assert (alarms["x"], alarms["y"]) == (0, 0)
    (text,) = (w for w in widgets if w["type"] == "text")
    assert text["y"] == 0
    assert "Emergency stop" in text["properties"]["markdown"]
    assert f"Version {__version__}" in text["properties"]["markdown"]
    (oldest,) = (
        w for w in widgets if w["type"] == "metric" and w["properties"]["metrics"][0][1] == "OldestQuarantineSeconds"
    )
    assert oldest["properties"]["annotations"]["horizontal"][0]["value"] == 1800  # QuarantineAlarmSeconds


def test_dashboard_widgets_fit_the_grid_without_overlapping(stack: Stack) -> None:
    taken: set[tuple[int, int]] = set()
    for widget in dashboard_widgets(stack):
        x, y, width, height = (int(widget[k]) for k in ("x", "y", "width", "height"))
        assert x + width <= 24, widget
        cells = {(x + i, y + j) for i in range(width) for j in range(height)}
        assert not cells & taken, widget
        taken |= cells


def test_dashboard_shows_duration_against_each_timeout(stack: Stack) -> None:
    (duration,) = (
        w for w in dashboard_widgets(stack) if w["type"] == "metric" and w["properties"]["metrics"][0][1] == "Duration"
    )
    lines = {m[3]: m[-1]["label"] for m in duration["properties"]["metrics"]}
    timeouts = {a["label"]: a["value"] for a in duration["properties"]["annotations"]["horizontal"]}
    for function in (REACTOR, POLLER):
        label = lines[f"<Ref:{function}>"].replace("maximum", "timeout")
        assert timeouts[label] == 1000 * stack.properties(function)["Timeout"], function
    assert duration["properties"]["stat"] == "Maximum"


def test_dashboard_lists_the_last_removals_with_their_reasons(stack: Stack) -> None:
    (removals,) = (w for w in dashboard_widgets(stack) if w["type"] == "log")
    query = removals["properties"]["query"]
    for log_group in ("TaskStateReactorLogGroup", "HealthPollerLogGroup"):
        assert f"SOURCE '<Ref:{log_group}>'" in query
    for message in (REMOVED_MESSAGE, DRY_RUN_REMOVED_MESSAGE):  # the reporting module's own log lines
        assert f'message = "{message}"' in query
    fields = re.search(r"\| fields ([^|]+)\|", query)
    assert fields
    assert {"reason", "outcome", "ecs_service", "task_arn", "cloudmap_service_id"} <= {
        f.strip() for f in fields.group(1).split(",")
    }
    assert "sort @timestamp desc" in query


def test_outputs(stack: Stack) -> None:
    outputs = {name: stack.resolve(o["Value"]) for name, o in stack.template["Outputs"].items()}
    assert outputs["TaskStateReactorFunctionArn"] == f"<{REACTOR}.Arn>"
    assert outputs["HealthPollerFunctionArn"] == f"<{POLLER}.Arn>"
    assert outputs["DeadLetterQueueUrl"] == "<Ref:DeadLetterQueue>"
    assert outputs["LedgerTableName"] == f"<Ref:{LEDGER}>"
    assert outputs["AlarmTopicArn"] == PAGE
    assert outputs["WarningTopicArn"] == WARNING
    assert outputs["DashboardName"] == "<Ref:Dashboard>"
    assert outputs["DashboardUrl"].startswith(f"https://{REGION}.console.aws.amazon.com/cloudwatch/")
    assert outputs["Version"] == __version__, "the Version output must follow cloudmap_reactor.__version__"


# --------------------------------------------------------------------------------------------
# sam validate --lint
# --------------------------------------------------------------------------------------------


def sam_executable() -> str | None:
    """The sam installed next to this Python (the project venv), else one on PATH."""
    beside = Path(sys.executable).parent / ("sam.exe" if os.name == "nt" else "sam")
    return str(beside) if beside.exists() else shutil.which("sam")


def test_sam_validate_lint() -> None:
    sam = sam_executable()
    if sam is None:
        pytest.skip("the sam CLI is not installed (pip install -r requirements-dev.txt)")
    result = subprocess.run(
        [sam, "validate", "--lint", "--template-file", str(TEMPLATE)],
        cwd=ROOT,
        env={**os.environ, "SAM_CLI_TELEMETRY": "0"},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "is a valid SAM Template" in result.stdout
