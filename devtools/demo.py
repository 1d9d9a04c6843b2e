"""`make demo`: the reactor and the poller, through their real Lambda handlers, against a local AWS.

No AWS account is needed. A moto server (the local AWS emulator) listens on 127.0.0.1; the
handlers reach it through ``AWS_ENDPOINT_URL`` exactly as they would reach AWS. The fleet is
seeded through the AWS APIs; ``devtools.aws_emulator`` fills in what only ECS can set. The
quarantine ledger is the template's ``LedgerTable``, created in the emulator
(``devtools.ledger_table``) and passed to the handlers as ``LEDGER_TABLE``.

First the reactor gets the files in ``events/``; then three poller invocations show tasks taken
out for their health and registered again when they recover (``devtools.demo_quarantine``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
from moto.server import ThreadedMotoServer

from devtools.aws_emulator import FleetBuilder, aws_like_ecs
from devtools.demo_capture import captured, emf_metrics
from devtools.demo_quarantine import QuarantineCast, run_quarantine_scenario, seed_quarantine_cast
from devtools.http_targets import LocalHttpTargets, local_http_targets
from devtools.ledger_table import create_ledger_table
from devtools.local_lambda import FakeLambdaContext, emulator_environment

EVENTS = Path(__file__).resolve().parent.parent / "events"
REGION = "us-east-1"
# Poller invocations of three passes, a second apart (10 s in production), with HTTP probes on
# (as when the poller runs in the tasks' VPC): a failing /healthz reaches the threshold of 3 in one.
POLLER_ENV = {"POLL_INTERVAL_SECONDS": "1", "POLL_WINDOW_SECONDS": "2.5", "HTTP_PROBES": "true"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=0, help="port for the local emulator (default: a free one)")
    parser.add_argument("--verbose", action="store_true", help="also print the handlers' JSON log records")
    parser.add_argument(
        "--serve",
        action="store_true",
        help="seed the emulator and keep it running (for sam local invoke) instead of replaying the events",
    )
    args = parser.parse_args(argv)

    port = args.port or _free_port()
    endpoint = f"http://127.0.0.1:{port}"
    os.environ.update({**emulator_environment(endpoint), "CLUSTER_ARNS": "", "DRY_RUN": "false", **POLLER_ENV})
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN"):
        os.environ.pop(name, None)

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server.start()
    try:
        with aws_like_ecs(), local_http_targets() as http:
            print(f"Local AWS emulator (moto server) listening on {endpoint}\n")
            os.environ["LEDGER_TABLE"] = create_ledger_table(boto3.client("dynamodb"))
            fleet = FleetBuilder(boto3.client("ecs"), boto3.client("servicediscovery"), region=REGION)
            seeded = _seed(fleet, http)
            before = _snapshot(fleet, seeded)
            _print_registrations("Cloud Map before", before, seeded)
            if args.serve:
                _serve_until_interrupted(endpoint)  # what sam local invoke changed is shown below
            else:
                _replay(verbose=args.verbose)
                run_quarantine_scenario(seeded.cast, fleet, verbose=args.verbose)
            after = _snapshot(fleet, seeded)
            _print_registrations("Cloud Map after", after, seeded, before=before)
    finally:
        server.stop()
    return 0


def _serve_until_interrupted(endpoint: str) -> None:
    print(
        f"Serving the seeded emulator on {endpoint} (ledger table {os.environ['LEDGER_TABLE']}); "
        "replay events with sam local invoke. Ctrl-C to stop."
    )
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        print()


@dataclass
class Seeded:
    cloudmap_names: dict[str, str]  # Cloud Map service id -> "ecs-service / discovery name"
    task_notes: dict[str, str]  # task id -> what the demo did to it
    cast: QuarantineCast  # payments and catalog: the poller's part

    def note(self, instance_id: str) -> str:
        member = next((m for m in self.cast.members if m.instance_id == instance_id), None)
        return f"{member.label}: {member.state()}" if member else self.task_notes.get(instance_id, "")


def _seed(fleet: FleetBuilder, http: LocalHttpTargets) -> Seeded:
    """Cluster ``prod``: orders (2 discovery names, mid rolling update), worker (no Service Connect).

    And the quarantine's cast (``seed_quarantine_cast``): payments (ECS health checks) and catalog
    (no container health check, tagged for HTTP probes; its tasks are HTTP servers on 127.0.0.1).
    """
    stopping = _task_id("task-stopping.json")
    stopping_old = _task_id("task-stopping-old-deployment.json")
    fleet.create_cluster("prod")
    orders = fleet.create_service("prod", "orders", discovery_names=["orders", "orders-grpc"])
    fleet.start_tasks(orders, 3, task_ids=[stopping, stopping_old])
    old_names = dict(zip(orders.cloudmap_service_ids, ["orders", "orders-grpc"], strict=True))
    new_ids = fleet.start_rolling_update(orders, discovery_names=["orders-v2"])
    fleet.start_tasks(orders, 1, register_in=new_ids)
    worker = fleet.create_service("prod", "worker")
    fleet.set_health(fleet.start_tasks(worker, 1)[0], "UNHEALTHY")
    cast = seed_quarantine_cast(fleet, http, "prod")
    fleet.begin_stopping(orders.task_arns[0], "Task failed container health checks")
    fleet.begin_stopping(orders.task_arns[1])

    names = {sid: f"orders / {name}" for sid, name in old_names.items()}
    names[new_ids[0]] = "orders / orders-v2 (new deployment)"
    for title, service in cast.services.items():
        names[service.cloudmap_service_ids[0]] = title
    notes = {
        stopping: "stopping (events/task-stopping.json)",
        stopping_old: "stopping, older deployment (events/task-stopping-old-deployment.json)",
        _short(orders.task_arns[2]): "running, older deployment",
        _short(orders.task_arns[3]): "running, new deployment",
    }
    return Seeded(cloudmap_names=names, task_notes=notes, cast=cast)


def _replay(*, verbose: bool) -> None:
    """The reactor: every file in events/ it handles, and a malformed event."""
    # Imported only now, as Lambda would: Powertools reads its environment when the handlers load.
    from cloudmap_reactor.handlers import task_state_change  # noqa: PLC0415

    invalid = json.loads((EVENTS / "task-stopping.json").read_text())
    invalid["detail"]["taskArn"] = "not-an-arn"
    steps: list[tuple[str, Any, Any]] = [
        ("events/task-stopping.json", task_state_change.lambda_handler, _event("task-stopping.json")),
        (
            "events/task-stopping-old-deployment.json",
            task_state_change.lambda_handler,
            _event("task-stopping-old-deployment.json"),
        ),
        (
            "events/task-stopped.json (a later event for the same task)",
            task_state_change.lambda_handler,
            _event("task-stopped.json"),
        ),
        ("events/task-running.json", task_state_change.lambda_handler, _event("task-running.json")),
        (
            "events/standalone-task-stopping.json",
            task_state_change.lambda_handler,
            _event("standalone-task-stopping.json"),
        ),
        ("a malformed event (taskArn 'not-an-arn')", task_state_change.lambda_handler, invalid),
    ]
    for title, handler, event in steps:
        print(f"▶ {title}")
        with captured() as (logs, stdout):
            result = handler(event, FakeLambdaContext(function_name=handler.__module__.rsplit(".", 1)[-1]))
        print(f"  result: {json.dumps(_brief(result))}")
        for record in logs:
            extra = ", ".join(
                f"{k}={record[k]}"
                for k in ("outcome", "reason", "cloudmap_service_id", "instance_id", "validation_error", "error", "url")
                if k in record
            )
            print(f"  log {record['level']:<7} {record['message']}" + (f" ({extra})" if extra else ""))
            if verbose:
                print("    " + json.dumps(record))
        for name, dims, value in emf_metrics(stdout.getvalue()):
            print(f"  metric {name}{dims} = {value:g}")
        print()


def _brief(result: dict[str, Any]) -> dict[str, Any]:
    wanted = ("status", "outcomes", "passes", "unhealthy_found", "deregistrations")
    return {k: v for k, v in result.items() if k in wanted}


def _snapshot(fleet: FleetBuilder, seeded: Seeded) -> dict[str, set[str]]:
    return {sid: fleet.instance_ids(sid) for sid in seeded.cloudmap_names}


def _print_registrations(
    title: str, state: dict[str, set[str]], seeded: Seeded, before: dict[str, set[str]] | None = None
) -> None:
    print(f"── {title} " + "─" * (60 - len(title)))
    for sid, name in seeded.cloudmap_names.items():
        print(f"  {name}  [{sid}]")
        shown = sorted(state[sid] | (before or {}).get(sid, set()), key=lambda i: (seeded.cast.label(i), i))
        for instance in shown:
            gone = instance not in state[sid]
            mark = "  ✗ removed   " if gone else "  ✓ registered"
            note = seeded.note(instance)
            print(f"    {mark} {instance}  {note}")
    print()


def _event(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((EVENTS / name).read_text())
    return loaded


def _task_id(name: str) -> str:
    return str(_event(name)["detail"]["taskArn"]).rsplit("/", 1)[-1]


def _short(task_arn: str) -> str:
    return task_arn.rsplit("/", 1)[-1]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "functions"))
    sys.exit(main())
