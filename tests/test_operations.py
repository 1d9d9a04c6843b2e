"""Operating it: the emergency stop, and what a production-configured invocation logs and counts."""

from __future__ import annotations

import json
import os
import warnings
from typing import Any

import boto3
import pytest

from cloudmap_reactor import __version__, wiring
from cloudmap_reactor.adapters.clients import cloudmap_client, dynamodb_client, ecs_client
from cloudmap_reactor.adapters.ledger import DynamoDbLedger
from cloudmap_reactor.handlers import task_state_change
from cloudmap_reactor.observability import logger
from devtools.aws_emulator import FleetBuilder, SeededService
from devtools.local_lambda import FakeLambdaContext
from tests.conftest import count_calls, poll, task_event, task_ids
from tests.test_template import POLLER, REACTOR, Stack, as_deployed


@pytest.fixture
def orders(aws: FleetBuilder) -> SeededService:
    """``orders`` in cluster ``prod``: 3 HEALTHY tasks; the first is stopping, the second UNHEALTHY."""
    aws.create_cluster("prod")
    service = aws.create_service("prod", "orders", discovery_names=["orders"])
    for arn in aws.start_tasks(service, 3):
        aws.set_health(arn, "HEALTHY")
    aws.begin_stopping(service.task_arns[0])
    aws.set_health(service.task_arns[1], "UNHEALTHY")
    return service


def ledger_items() -> list[dict[str, Any]]:
    """Every item of the ledger table (the lease too), read with a client of the test's own."""
    items: list[dict[str, Any]] = boto3.client("dynamodb").scan(TableName=os.environ["LEDGER_TABLE"])["Items"]
    return items


def invoke_reactor(service: SeededService, context: FakeLambdaContext) -> dict[str, Any]:
    event = task_event(service.task_arns[0], service.cluster_arn, group="service:orders")
    result: dict[str, Any] = task_state_change.lambda_handler(event, context)
    return result


@pytest.mark.parametrize("function", ["reactor", "poller"])
def test_the_emergency_stop_touches_nothing(
    aws: FleetBuilder,
    orders: SeededService,
    env: pytest.MonkeyPatch,
    lambda_context: FakeLambdaContext,
    read_output: Any,
    function: str,
) -> None:
    """Enabled=false: no AWS call at all (no lease, no read), nothing changes, and it says so."""
    env.setenv("ENABLED", "false")
    calls = [count_calls(client()) for client in (ecs_client, cloudmap_client, dynamodb_client)]
    before = {sid: aws.instance_ids(sid) for sid in orders.cloudmap_service_ids}

    result = invoke_reactor(orders, lambda_context) if function == "reactor" else poll(lambda_context)

    assert result == {"status": "disabled"}  # returned, never raised: no retries, no dead letters
    assert sum(c.total() for c in calls) == 0
    assert {sid: aws.instance_ids(sid) for sid in orders.cloudmap_service_ids} == before
    assert before == {orders.cloudmap_service_ids[0]: task_ids(*orders.task_arns)}
    assert ledger_items() == []
    assert wiring.reactor_deps.cache_info().currsize == wiring.poller_deps.cache_info().currsize == 0
    output = read_output()
    assert output.metrics.value("Disabled", service="cloudmap-reactor") == 1
    assert output.metrics.names() == {"Disabled"}
    assert any("Emergency stop: Enabled=false" in m for m in output.messages("WARNING"))


def test_enabled_again_the_functions_act(
    aws: FleetBuilder, orders: SeededService, env: pytest.MonkeyPatch, lambda_context: FakeLambdaContext
) -> None:
    env.setenv("ENABLED", "true")
    poll(lambda_context)
    assert aws.instance_ids(orders.cloudmap_service_ids[0]) == task_ids(orders.task_arns[2])


def production_environment(logical_id: str) -> dict[str, str]:
    """A function's environment exactly as template.yaml sets it with its defaults."""
    return as_deployed(Stack({}).properties(logical_id)["Environment"]["Variables"])


def test_a_production_configured_invocation_logs_no_warning(
    aws: FleetBuilder, orders: SeededService, env: pytest.MonkeyPatch, lambda_context: FakeLambdaContext
) -> None:
    """Invocations with nothing to count (an ignored event, a pass that finds another holding the lease)."""
    table = os.environ["LEDGER_TABLE"]
    aws.run_standalone_task(orders.cluster_arn, "batch")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning, from Powertools or from us, fails the test
        for name, value in production_environment(REACTOR).items():
            env.setenv(name, value)
        env.setenv("LEDGER_TABLE", table)
        wiring.reset()
        ignored = task_event(orders.task_arns[0], orders.cluster_arn, group="family:batch")
        assert task_state_change.lambda_handler(ignored, lambda_context)["status"] == "ignored"
        assert invoke_reactor(orders, lambda_context)["status"] == "processed"

        for name, value in production_environment(POLLER).items():
            env.setenv(name, value)
        env.setenv("LEDGER_TABLE", table)
        env.setenv("POLL_WINDOW_SECONDS", "0")  # one pass, not the 50 s the schedule allows
        wiring.reset()
        assert DynamoDbLedger(boto3.client("dynamodb"), table).hold_lease("another-invocation", 60)
        assert poll(lambda_context)["passes"] == 1  # did nothing: the lease is another's
        assert aws.instance_ids(orders.cloudmap_service_ids[0]) == task_ids(*orders.task_arns[1:])


def formatted(records: list[Any]) -> list[dict[str, Any]]:
    """The JSON lines Powertools writes for these records."""
    return [json.loads(logger.registered_formatter.format(r)) for r in records if r.name == "cloudmap-reactor"]


def test_every_log_line_carries_the_version(
    aws: FleetBuilder, orders: SeededService, lambda_context: FakeLambdaContext, caplog: pytest.LogCaptureFixture
) -> None:
    invoke_reactor(orders, lambda_context)
    poll(lambda_context)
    lines = formatted(caplog.records)
    assert len(lines) >= 3
    assert {line["version"] for line in lines} == {__version__}


@pytest.mark.parametrize("level", ["DEBUG", "INFO"])
def test_debug_logs_say_what_was_decided_and_why(
    aws: FleetBuilder,
    orders: SeededService,
    env: pytest.MonkeyPatch,
    lambda_context: FakeLambdaContext,
    read_output: Any,
    level: str,
) -> None:
    env.setenv("LOG_LEVEL", level)
    env.setenv("DRY_RUN", "true")
    poll(lambda_context)
    logs = read_output().logs
    decided = [r for r in logs if r["message"] in {"Decided", "Held back"}]
    if level == "INFO":
        assert decided == []
        return
    assert all(r["level"] == "DEBUG" for r in decided)
    unhealthy = [r for r in decided if r.get("rule") == "ecs-unhealthy"]
    assert {(r["message"], r["hold"], r["reason"], r["task_arn"]) for r in unhealthy} == {
        ("Held back", "dry-run", "Unhealthy", orders.task_arns[1])
    }
    reconciled = {r["task_arn"] for r in decided if r.get("rule") == "reconcile"}
    assert reconciled == {orders.task_arns[0]}
