"""`make demo`'s quarantine scenario, run as a test so that it cannot silently rot.

The same function the demo calls (``run_quarantine_scenario``), against the in-process emulator
and real HTTP servers on 127.0.0.1; the poll loop's sleeps are skipped (fake time for ``PollLoop``
only), so three invocations of three passes take about a second.
"""

from __future__ import annotations

from typing import Any

import pytest

from cloudmap_reactor.core.poll_loop import PollLoop
from devtools.aws_emulator import FleetBuilder
from devtools.demo_quarantine import Happened, run_quarantine_scenario, seed_quarantine_cast
from devtools.http_targets import local_http_targets
from tests.conftest import FakeTime


def test_the_demo_quarantine_scenario_takes_tasks_out_and_brings_them_back(
    aws: FleetBuilder, env: pytest.MonkeyPatch, mocker: Any
) -> None:
    for name, value in {"HTTP_PROBES": "true", "POLL_INTERVAL_SECONDS": "1", "POLL_WINDOW_SECONDS": "2.5"}.items():
        env.setenv(name, value)
    fake = FakeTime(step=0.0)
    mocker.patch(
        "cloudmap_reactor.handlers.health_poller.PollLoop",
        lambda **kwargs: PollLoop(**kwargs, clock=fake.clock, sleep=fake.sleep),
    )
    printed: list[str] = []
    with local_http_targets() as http:
        aws.create_cluster("prod")
        cast = seed_quarantine_cast(aws, http, "prod")
        report = run_quarantine_scenario(cast, aws, out=printed.append)

    assert set(report.happened) == {
        Happened(1, 1, "payments-2", "removed", "Unhealthy"),
        Happened(1, 1, "catalog-3", "removed", "NotReady"),  # the slow starter, at its first failed probe
        Happened(2, 2, "catalog-3", "restored", "NotReady"),  # two successful probes once it answers
        Happened(2, 3, "catalog-4", "removed", "ProbeFailed"),  # the third failure in a row
        Happened(3, 1, "payments-2", "restored", "Unhealthy"),  # ECS HEALTHY: at once
        Happened(3, 2, "catalog-4", "restored", "ProbeFailed"),
    }
    assert report.restored == {"NotReady": 1, "ProbeFailed": 1, "Unhealthy": 1}
    assert report.deregistered == {"NotReady": 1, "ProbeFailed": 1, "Unhealthy": 1}
    assert report.identical == {"catalog-3": True, "catalog-4": True, "payments-2": True}
    assert report.ledger_left == 0
    text = "\n".join(printed)
    for shown in ("Cloud Map after invocation 3", "Quarantine ledger", "TasksRestored{Reason=NotReady}=1"):
        assert shown in text


def test_sam_local_env_names_the_ledger_table_the_demo_server_creates() -> None:
    """`make demo-server` creates the table as TABLE_NAME: `sam local invoke --env-vars events/env.json` uses it."""
    import json
    from pathlib import Path

    from devtools.ledger_table import TABLE_NAME

    env = json.loads((Path(__file__).resolve().parent.parent / "events" / "env.json").read_text())
    assert {name: values.get("LEDGER_TABLE") for name, values in env.items()} == {
        "TaskStateReactorFunction": TABLE_NAME,
        "HealthPollerFunction": TABLE_NAME,
    }
