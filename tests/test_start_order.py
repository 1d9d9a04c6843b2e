"""Start-order drift: WordPress started before MySQL's Service Connect endpoint existed.

Against the local emulator: the client's tasks start an hour ago, the database's endpoint (its
Cloud Map service) is created now, as happens when CloudFormation creates both services in parallel.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from cloudmap_reactor.adapters.clients import ecs_client
from cloudmap_reactor.core.model import EcsService, TaskSnapshot
from cloudmap_reactor.core.start_order import choose_redeployment, dependency_endpoints, find_stale
from devtools.aws_emulator import FleetBuilder, SeededService
from devtools.local_lambda import FakeLambdaContext
from tests.conftest import count_calls, poll

AN_HOUR_AGO = datetime.now(UTC) - timedelta(hours=1)
DEPENDS_ON = "cloudmap-reactor:depends-on"


def wordpress(
    aws: FleetBuilder, *, tags: dict[str, str] | None = None, started_at: datetime = AN_HOUR_AGO
) -> SeededService:
    client = aws.create_service("prod", "wordpress", service_connect=True, tags=tags)
    aws.start_tasks(client, 2, started_at=started_at)
    return client


@pytest.fixture
def mysql(aws: FleetBuilder) -> SeededService:
    aws.create_cluster("prod")
    return aws.create_service("prod", "mysql", discovery_names=["mysql"])


def start_mysql(aws: FleetBuilder, mysql: SeededService) -> None:
    aws.start_tasks(mysql, 1)


def test_client_started_before_its_dependency_endpoint_is_reported(
    aws: FleetBuilder, mysql: SeededService, lambda_context: FakeLambdaContext, read_output: Any
) -> None:
    wordpress(aws, tags={DEPENDS_ON: "mysql"})
    start_mysql(aws, mysql)
    ecs = count_calls(ecs_client())

    poll(lambda_context)

    output = read_output()
    assert output.metrics.value("StaleDependencyTasks") == 2
    assert output.metrics.value("ClientsRedeployed") == 0
    assert ecs.counts["UpdateService"] == 0  # healing is off by default
    report = next(r for r in output.logs if r["message"].startswith("Client tasks started before endpoints"))
    assert (report["ecs_service"], report["stale_tasks"], list(report["endpoints"])) == ("wordpress", 2, ["mysql"])


def test_client_started_after_the_endpoint_is_not_stale(
    aws: FleetBuilder, mysql: SeededService, lambda_context: FakeLambdaContext, read_output: Any
) -> None:
    wordpress(aws, tags={DEPENDS_ON: "mysql"}, started_at=datetime.now(UTC) + timedelta(seconds=5))
    start_mysql(aws, mysql)

    poll(lambda_context)

    assert read_output().metrics.value("StaleDependencyTasks") == 0


@pytest.mark.parametrize(("every_endpoint", "stale"), [("false", 0), ("true", 2)])
def test_undeclared_endpoints_count_only_with_the_namespace_wide_option(
    aws: FleetBuilder,
    mysql: SeededService,
    env: pytest.MonkeyPatch,
    lambda_context: FakeLambdaContext,
    read_output: Any,
    every_endpoint: str,
    stale: int,
) -> None:
    env.setenv("STALE_CHECK_ALL_ENDPOINTS", every_endpoint)
    wordpress(aws)  # no depends-on tag
    start_mysql(aws, mysql)

    poll(lambda_context)

    assert read_output().metrics.value("StaleDependencyTasks") == stale


def test_healing_redeploys_the_client_exactly_once(
    aws: FleetBuilder,
    mysql: SeededService,
    env: pytest.MonkeyPatch,
    lambda_context: FakeLambdaContext,
    fake_time: Any,
    read_output: Any,
) -> None:
    env.setenv("REDEPLOY_STALE_CLIENTS", "true")
    env.setenv("POLL_WINDOW_SECONDS", "40")
    client = wordpress(aws, tags={DEPENDS_ON: "mysql"})
    start_mysql(aws, mysql)
    ecs = count_calls(ecs_client())

    first = poll(lambda_context)  # several passes: redeployed on the first only

    assert first["passes"] >= 2
    assert ecs.counts["UpdateService"] == 1
    assert read_output().metrics.value("ClientsRedeployed") == 1

    # ECS replaces the client's tasks: the new ones start after the endpoint exists.
    for arn in client.task_arns:
        aws.ecs.stop_task(cluster=client.cluster_arn, task=arn, reason="Deployment")
    aws.start_tasks(client, 2)
    ecs.reset()

    poll(lambda_context)  # a later invocation

    assert ecs.counts["UpdateService"] == 0
    output = read_output()
    assert output.metrics.value("StaleDependencyTasks") == 0


def test_a_client_with_a_deployment_in_progress_is_not_redeployed(
    aws: FleetBuilder, mysql: SeededService, env: pytest.MonkeyPatch, lambda_context: FakeLambdaContext
) -> None:
    env.setenv("REDEPLOY_STALE_CLIENTS", "true")
    client = wordpress(aws, tags={DEPENDS_ON: "mysql"})
    aws.start_rolling_update(client, discovery_names=[])
    start_mysql(aws, mysql)
    ecs = count_calls(ecs_client())

    poll(lambda_context)

    assert ecs.counts["UpdateService"] == 0


def test_healing_per_service_by_tag_and_dry_run_changes_nothing(
    aws: FleetBuilder,
    mysql: SeededService,
    env: pytest.MonkeyPatch,
    lambda_context: FakeLambdaContext,
    read_output: Any,
) -> None:
    env.setenv("DRY_RUN", "true")
    wordpress(aws, tags={DEPENDS_ON: "mysql", "cloudmap-reactor:redeploy-stale": "true"})
    start_mysql(aws, mysql)
    ecs = count_calls(ecs_client())

    poll(lambda_context)

    assert ecs.counts["UpdateService"] == 0
    output = read_output()
    assert output.metrics.value("ClientsRedeployed") == 0
    assert any(r["message"].startswith("DRY_RUN: would force a new deployment") for r in output.logs)


# -- the decisions, without AWS ------------------------------------------------------------------
CLUSTER = "arn:aws:ecs:us-east-1:123456789012:cluster/prod"
NS = "arn:aws:servicediscovery:us-east-1:123456789012:namespace/ns-1"


def service(name: str, **kwargs: Any) -> EcsService:
    return EcsService(CLUSTER, name, f"{CLUSTER}/{name}", service_connect=True, namespace=NS, **kwargs)


def test_dependencies_stay_in_the_namespace_and_never_include_the_client_itself() -> None:
    client = service("wp", tags=((DEPENDS_ON, "mysql, cache, missing"),), endpoints=(("wp", "srv-wp"),))
    others = [
        client,
        service("db", endpoints=(("mysql", "srv-db"),)),
        service("cache", endpoints=(("cache", "srv-c"),)),
        EcsService(CLUSTER, "other", f"{CLUSTER}/other", endpoints=(("mysql", "srv-x"),), namespace="ns-other"),
    ]
    assert dependency_endpoints(client, others, every_endpoint=False) == {"mysql": "srv-db", "cache": "srv-c"}
    assert dependency_endpoints(client, others, every_endpoint=True) == {"mysql": "srv-db", "cache": "srv-c"}


def test_one_client_per_cluster_per_pass() -> None:
    created = {"mysql": datetime(2026, 1, 1, 12, tzinfo=UTC)}
    task = TaskSnapshot(
        CLUSTER, f"{CLUSTER}/t", "service:x", "RUNNING", "RUNNING", "HEALTHY", datetime(2026, 1, 1, tzinfo=UTC)
    )
    stale = [find_stale(service(name), [task], created) for name in ("b", "a")]
    assert all(stale)
    chosen = choose_redeployment([s for s in stale if s], heal_all=True, already=set())
    assert chosen is not None
    assert chosen.service.service_name == "a"
    assert choose_redeployment([s for s in stale if s], heal_all=False, already=set()) is None
