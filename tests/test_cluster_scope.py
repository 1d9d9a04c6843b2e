"""Which clusters are looked after, and what an operator is told when AWS refuses or a cluster is gone.

Against the local emulator: clusters named by a tag (``CLUSTER_TAG``), a deleted cluster still named
in ``CLUSTER_ARNS`` (a configuration error, reported once per container, never a failed pass), and a
call AWS denies (``AccessDenied`` metric naming the operation).
"""

from __future__ import annotations

from typing import Any

import pytest
from botocore.exceptions import ClientError

from cloudmap_reactor import cli, wiring
from cloudmap_reactor.adapters.clients import cloudmap_client, ecs_client
from cloudmap_reactor.adapters.clusters import ClusterDirectory
from cloudmap_reactor.config import ConfigError, Policy
from cloudmap_reactor.events import parse_task_state_change
from cloudmap_reactor.handlers import task_state_change
from devtools.aws_emulator import FleetBuilder, SeededService
from devtools.local_lambda import FakeLambdaContext
from tests.conftest import count_calls, load_event, poll, task_event, task_ids
from tests.test_start_order import DEPENDS_ON, start_mysql, wordpress

TAG = "team=payments"


def sick_service(aws: FleetBuilder, cluster: str) -> SeededService:
    """``orders`` in ``cluster``: 3 tasks, the first UNHEALTHY."""
    service = aws.create_service(cluster, "orders", discovery_names=["orders"])
    for arn in aws.start_tasks(service, 3):
        aws.set_health(arn, "HEALTHY")
    aws.set_health(service.task_arns[0], "UNHEALTHY")
    return service


def tag_cluster(arn: str, key: str = "team", value: str = "payments") -> None:
    ecs_client().tag_resource(resourceArn=arn, tags=[{"key": key, "value": value}])


# -- ClusterTag ------------------------------------------------------------------------------------


def test_cluster_tag_is_key_equals_value_and_excludes_cluster_arns() -> None:
    assert Policy.from_env({"CLUSTER_TAG": TAG}).cluster_tag_pair == ("team", "payments")
    assert Policy.from_env({"CLUSTER_TAG": "empty="}).cluster_tag_pair == ("empty", "")
    assert Policy.from_env({}).cluster_tag_pair is None
    assert Policy.from_env({"CLUSTER_TAG": "cost center=team a"}).cluster_tag_pair == ("cost center", "team a")
    for bad in ("no-equals", "=value", "a=b,c", "team =payments", "team= payments"):
        with pytest.raises(ConfigError, match="CLUSTER_TAG"):
            Policy.from_env({"CLUSTER_TAG": bad})
    with pytest.raises(ConfigError, match="both set"):
        Policy.from_env({"CLUSTER_TAG": TAG, "CLUSTER_ARNS": "arn:aws:ecs:us-east-1:123456789012:cluster/prod"})


def test_the_poller_scans_only_the_clusters_carrying_the_tag(
    aws: FleetBuilder, env: pytest.MonkeyPatch, lambda_context: FakeLambdaContext, read_output: Any
) -> None:
    env.setenv("CLUSTER_TAG", TAG)
    tagged, other = aws.create_cluster("prod"), aws.create_cluster("other")
    tag_cluster(tagged)
    tag_cluster(other, value="search")  # same key, another value: not ours
    ours, theirs = sick_service(aws, "prod"), sick_service(aws, "other")

    assert poll(lambda_context)["status"] == "completed"

    assert aws.instance_ids(ours.cloudmap_service_ids[0]) == task_ids(*ours.task_arns[1:])
    assert aws.instance_ids(theirs.cloudmap_service_ids[0]) == task_ids(*theirs.task_arns)
    output = read_output()
    assert output.metrics.value("TasksDeregistered", Reason="Unhealthy") == 1
    assert output.metrics.value("HealthScanCompleted") == 1


def test_a_cluster_tag_that_matches_no_cluster_withholds_the_heartbeat_and_says_so_once(
    aws: FleetBuilder, env: pytest.MonkeyPatch, lambda_context: FakeLambdaContext, read_output: Any
) -> None:
    """A typo in ClusterTag would otherwise look like a healthy fleet: every pass 'completed', nothing watched."""
    env.setenv("CLUSTER_TAG", "team=paymnets")
    tag_cluster(aws.create_cluster("prod"))

    first = poll(lambda_context)
    second = poll(lambda_context)  # the same container: said once

    assert first["status"] == second["status"] == "completed"  # no Lambda error: nothing failed
    output = read_output()
    assert output.metrics.value("HealthScanCompleted") == 0
    assert output.metrics.value("ClusterMissing") == 1
    assert len([m for m in output.messages("ERROR") if "no cluster to look after" in m]) == 1


def test_two_hundred_clusters_are_sorted_by_tag_in_four_calls(aws: FleetBuilder) -> None:
    """ListClusters (100 a page) and DescribeClusters (100 a call): 200 clusters, 2 pages, 2 describes."""
    arns = [aws.create_cluster(f"c{i:03d}") for i in range(200)]
    for arn in arns[:150]:
        tag_cluster(arn)
    calls = count_calls(ecs_client())
    found = ClusterDirectory(ecs_client(), "team", "payments").tagged()
    assert sorted(found) == sorted(arns[:150])
    assert (calls.counts["ListClusters"], calls.counts["DescribeClusters"]) == (2, 2)


def test_the_reactor_ignores_events_of_clusters_without_the_tag(
    aws: FleetBuilder, env: pytest.MonkeyPatch, lambda_context: FakeLambdaContext
) -> None:
    env.setenv("CLUSTER_TAG", TAG)
    tagged, other = aws.create_cluster("prod"), aws.create_cluster("other")
    tag_cluster(tagged)
    ours, theirs = sick_service(aws, "prod"), sick_service(aws, "other")

    ignored = task_state_change.lambda_handler(
        task_event(theirs.task_arns[1], other, group="service:orders"), lambda_context
    )
    done = task_state_change.lambda_handler(
        task_event(ours.task_arns[1], tagged, group="service:orders"), lambda_context
    )

    assert ignored["status"] == "ignored"
    assert aws.instance_ids(theirs.cloudmap_service_ids[0]) == task_ids(*theirs.task_arns)
    assert done["status"] == "processed"
    assert aws.instance_ids(ours.cloudmap_service_ids[0]) == task_ids(ours.task_arns[0], ours.task_arns[2])


# -- a cluster that no longer exists ---------------------------------------------------------------


def test_a_deleted_cluster_in_cluster_arns_is_reported_once_and_does_not_fail_the_pass(
    aws: FleetBuilder, env: pytest.MonkeyPatch, lambda_context: FakeLambdaContext, read_output: Any
) -> None:
    prod = aws.create_cluster("prod")
    gone = prod.replace("cluster/prod", "cluster/deleted-last-week")
    env.setenv("CLUSTER_ARNS", f"{gone},{prod}")
    orders = sick_service(aws, "prod")

    first = poll(lambda_context)
    second = poll(lambda_context)  # the same container: said once is enough

    assert first["status"] == second["status"] == "completed"  # no Errors alarm
    assert aws.instance_ids(orders.cloudmap_service_ids[0]) == task_ids(*orders.task_arns[1:])
    output = read_output()
    assert output.metrics.value("HealthScanCompleted") == 2  # the heartbeat goes on
    assert output.metrics.value("ClusterMissing") == 1
    assert output.metrics.value("ClusterSkipped", Reason="Error") == 0
    errors = [r for r in output.logs if r["level"] == "ERROR"]
    assert [r["message"].split(":")[0] for r in errors] == ["Configuration error"]
    assert errors[0]["cluster_arn"] == gone

    wiring.reset()  # a new container says it again
    poll(lambda_context)
    assert read_output().metrics.value("ClusterMissing") == 1  # (output since the last read)


# -- AccessDenied ----------------------------------------------------------------------------------


def deny(client: Any, operation: str) -> None:
    """Make AWS refuse one operation as IAM does (the call never reaches the emulator)."""

    def refuse(**_: Any) -> None:
        raise ClientError(
            {"Error": {"Code": "AccessDeniedException", "Message": f"not authorized to perform {operation}"}},
            operation,
        )

    client.meta.events.register(f"before-call.*.{operation}", refuse)


def test_a_denied_redeployment_is_counted_as_access_denied(
    aws: FleetBuilder, lambda_context: FakeLambdaContext, read_output: Any
) -> None:
    aws.create_cluster("prod")
    mysql = aws.create_service("prod", "mysql", discovery_names=["mysql"])
    wordpress(aws, tags={DEPENDS_ON: "mysql", "cloudmap-reactor:redeploy-stale": "true"})
    start_mysql(aws, mysql)
    deny(ecs_client(), "UpdateService")

    poll(lambda_context)

    output = read_output()
    assert output.metrics.value("AccessDenied", Reason="UpdateService") == 1
    assert output.metrics.value("ClientsRedeployed") == 0
    denied = [r for r in output.logs if r["message"].startswith("AWS denied an operation")]
    assert [(r["operation"], r["level"]) for r in denied] == [("UpdateService", "ERROR")]


def test_a_denied_deregistration_is_counted_as_access_denied(
    aws: FleetBuilder, lambda_context: FakeLambdaContext, read_output: Any
) -> None:
    prod = aws.create_cluster("prod")
    orders = sick_service(aws, "prod")
    deny(cloudmap_client(), "DeregisterInstance")

    with pytest.raises(task_state_change.DeregistrationFailed):
        task_state_change.lambda_handler(task_event(orders.task_arns[1], prod, group="service:orders"), lambda_context)

    output = read_output()
    assert output.metrics.value("DeregistrationErrors") == 1
    assert output.metrics.value("AccessDenied", Reason="DeregisterInstance") == 1


# -- event samples ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["task-stopping.json", "task-stopped.json", "task-running.json"])
def test_event_samples_carry_no_container_health_and_parsing_does_not_need_it(name: str) -> None:
    """ECS Task State Change events list containers without ``healthStatus`` (the EventBridge schema
    ``aws.ecs@ECSTaskStateChange`` has none; ``DescribeTasks`` does): samples must not suggest otherwise."""
    event = load_event(name)
    assert all("healthStatus" not in c for c in event["detail"]["containers"])
    parsed = parse_task_state_change(event, own_account="123456789012", own_region="us-east-1")
    for container in event["detail"]["containers"]:
        container["healthStatus"] = "UNHEALTHY"
    assert parse_task_state_change(event, own_account="123456789012", own_region="us-east-1") == parsed


def test_plan_and_doctor_read_the_tagged_clusters_of_a_stack_with_cluster_tag(aws: FleetBuilder) -> None:
    tagged, _ = aws.create_cluster("prod"), aws.create_cluster("other")
    tag_cluster(tagged)
    assert cli._clusters_in_scope(ecs_client(), Policy.from_env({"CLUSTER_TAG": TAG})) == [tagged]
    assert len(cli._clusters_in_scope(ecs_client(), Policy.from_env({}))) == 2


def test_a_denied_task_definition_lookup_is_counted_and_the_services_tasks_are_read_anyway(
    aws: FleetBuilder, lambda_context: FakeLambdaContext, read_output: Any
) -> None:
    """Not knowing whether a classic service can turn UNHEALTHY means reading its tasks (and saying why)."""
    aws.create_cluster("prod")
    plain = aws.create_service("prod", "plain", registry_names=["plain"], health_check=False)
    arns = aws.start_tasks(plain, 4)
    aws.set_health(arns[0], "UNHEALTHY")
    deny(ecs_client(), "DescribeTaskDefinition")

    poll(lambda_context)

    assert aws.instance_ids(plain.cloudmap_service_ids[0]) == task_ids(*arns[1:])
    assert read_output().metrics.value("AccessDenied", Reason="DescribeTaskDefinition") >= 1
