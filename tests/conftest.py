"""Shared fixtures: an in-process AWS emulator that answers like AWS, a Lambda context, EMF capture.

The environment is set here, before any handler module is imported, the way Lambda sets it
before a cold start. Nothing is re-imported between tests; ``wiring.reset()`` plays a new container.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from devtools.local_lambda import FakeLambdaContext, emulator_environment

for _name in ("AWS_ENDPOINT_URL", "AWS_PROFILE", "AWS_SESSION_TOKEN", "CLUSTER_ARNS", "DRY_RUN"):
    os.environ.pop(_name, None)
# One pass per poller invocation unless a test asks for a window (the template's schedule would poll 50 s).
os.environ.update({**emulator_environment(), "POWERTOOLS_DEV": "false", "POLL_WINDOW_SECONDS": "0"})

import boto3  # noqa: E402
from moto import mock_aws  # noqa: E402

from cloudmap_reactor import wiring  # noqa: E402
from devtools.aws_emulator import FleetBuilder, aws_like_ecs  # noqa: E402
from devtools.ledger_table import create_ledger_table  # noqa: E402
from tests import virtual_time  # noqa: E402
from tests.virtual_time import VirtualTime  # noqa: E402

EVENTS_DIR = Path(__file__).resolve().parent.parent / "events"


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[FleetBuilder]:
    """A fresh local AWS (ECS, Cloud Map, the ledger table as template.yaml declares it) per test,
    and a fresh 'container' for the handlers, configured as the template configures them."""
    with mock_aws(), aws_like_ecs():
        monkeypatch.setenv("LEDGER_TABLE", create_ledger_table(boto3.client("dynamodb")))
        wiring.reset()
        yield FleetBuilder(boto3.client("ecs"), boto3.client("servicediscovery"))
    wiring.reset()


@pytest.fixture
def clock(aws: FleetBuilder, mocker: Any) -> VirtualTime:
    """Virtual time for every thread (no real back-off, budget or probe wait).

    After ``aws``: a test's emulator patches are undone before the emulator's own.
    """
    return virtual_time.install(mocker)


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """Set function environment variables; the next invocation re-reads them as a cold start would."""
    yield monkeypatch
    wiring.reset()


@pytest.fixture
def window(env: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """Passes every 10 s for 40 s; services described and reconciled on the first pass only; no read budget."""
    env.setenv("POLL_WINDOW_SECONDS", "40")
    env.setenv("POLL_INTERVAL_SECONDS", "10")
    env.setenv("SERVICE_REFRESH_PASSES", "100")
    env.setenv("RECONCILE_EVERY_PASSES", "100")
    env.setenv("ECS_READS_PER_SECOND", "0")  # counts, not waits
    return env


@pytest.fixture
def lambda_context() -> FakeLambdaContext:
    return FakeLambdaContext()


@dataclass
class EmittedMetrics:
    """EMF records printed by Powertools, read back as (name, dimensions) → summed value."""

    records: list[dict[str, Any]] = field(default_factory=list)

    def value(self, name: str, **dimensions: str) -> float:
        total = 0.0
        for record in self.records:
            meta = record["_aws"]["CloudWatchMetrics"][0]
            names = {m["Name"] for m in meta["Metrics"]}
            dims = {d: record[d] for d in meta["Dimensions"][0]}
            if name in names and all(dims.get(k) == v for k, v in dimensions.items()):
                total += float(record[name]) if not isinstance(record[name], list) else sum(record[name])
        return total

    def names(self) -> set[str]:
        return {m["Name"] for r in self.records for m in r["_aws"]["CloudWatchMetrics"][0]["Metrics"]}

    def dimension_sets(self, name: str) -> list[set[str]]:
        return [
            set(r["_aws"]["CloudWatchMetrics"][0]["Dimensions"][0])
            for r in self.records
            if name in {m["Name"] for m in r["_aws"]["CloudWatchMetrics"][0]["Metrics"]}
        ]


@dataclass
class Output:
    metrics: EmittedMetrics
    logs: list[dict[str, Any]]

    def messages(self, level: str | None = None) -> list[str]:
        return [str(r.get("message")) for r in self.logs if level is None or r.get("level") == level]


@pytest.fixture
def read_output(capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> Any:
    """Call to read the EMF metrics printed so far and the application's log records."""
    caplog.set_level(logging.DEBUG, logger="cloudmap-reactor")

    def read() -> Output:
        emitted = EmittedMetrics()
        for line in capsys.readouterr().out.splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and "_aws" in record:
                emitted.records.append(record)
        logs = [
            {**vars(r), "message": r.getMessage(), "level": r.levelname}
            for r in caplog.records
            if r.name == "cloudmap-reactor"
        ]
        return Output(metrics=emitted, logs=logs)

    return read


@dataclass
class ApiCalls:
    """Counts the AWS API calls a client makes (one per operation call, not per retry)."""

    counts: Counter[str] = field(default_factory=Counter)

    def __call__(self, model: Any, **_: Any) -> None:
        self.counts[model.name] += 1

    def total(self, *operations: str) -> int:
        return sum(self.counts[o] for o in operations) if operations else sum(self.counts.values())

    def reset(self) -> None:
        self.counts.clear()


def count_calls(client: Any) -> ApiCalls:
    calls = ApiCalls()
    client.meta.events.register("before-call", calls)
    return calls


@dataclass
class FakeTime:
    """A clock for PollLoop: every reading moves it ``step`` seconds on; ``sleep`` moves it too."""

    step: float = 5.0
    now: float = 0.0
    slept: list[float] = field(default_factory=list)
    on_sleep: Any = None

    def clock(self) -> float:
        value = self.now
        self.now += self.step
        return value

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds
        if self.on_sleep:
            self.on_sleep()


@pytest.fixture
def fake_time(mocker: Any) -> FakeTime:
    """Run the poller's PollLoop on fake time (nothing else sees it)."""
    from cloudmap_reactor.core.poll_loop import PollLoop

    fake = FakeTime()
    mocker.patch(
        "cloudmap_reactor.handlers.health_poller.PollLoop",
        lambda **kwargs: PollLoop(**kwargs, clock=fake.clock, sleep=fake.sleep),
    )
    return fake


def task_ids(*arns: str) -> set[str]:
    """Cloud Map instance ids of tasks (the task id is the last segment of either ARN format)."""
    return {arn.rsplit("/", 1)[-1] for arn in arns}


def poll(context: FakeLambdaContext) -> dict[str, Any]:
    """One scheduled invocation of the health poller, with the event EventBridge Scheduler sends."""
    from cloudmap_reactor.handlers import health_poller

    result: dict[str, Any] = health_poller.lambda_handler(load_event("scheduled-poll.json"), context)
    return result


def load_event(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((EVENTS_DIR / name).read_text())
    return loaded


def task_event(
    task_arn: str,
    cluster_arn: str,
    *,
    group: str,
    desired_status: str = "STOPPED",
    last_status: str = "RUNNING",
    template: str = "task-stopping.json",
) -> dict[str, Any]:
    """A sample event from ``events/`` pointed at a task of the emulated fleet."""
    event = load_event(template)
    detail = event["detail"]
    detail.update(
        taskArn=task_arn,
        clusterArn=cluster_arn,
        group=group,
        desiredStatus=desired_status,
        lastStatus=last_status,
    )
    event["resources"] = [task_arn]
    for container in detail.get("containers", []):
        container["taskArn"] = task_arn
    return event
