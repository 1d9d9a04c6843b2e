"""The `cloudmap-reactor` command: look at an account before deploying, replay the dead-letter queue.

``doctor`` and ``plan`` use the caller's normal AWS credentials, profile and region (or the local
emulator through ``AWS_ENDPOINT_URL``), the same adapters and the same decisions as the functions.
They can only read: every client they create refuses, before sending, any operation that is not a
Describe, List or Get, so no deregistration or deployment is reachable from them.

* ``doctor``: per cluster and per Service Connect / service-discovery service, Cloud Map next to
  ECS: discovery names, instances vs running tasks, instances that match no task ECS knows (the
  task-id assumption does not hold, or a leak), instances of stopping tasks, tasks with no
  instance, UNHEALTHY tasks still registered, UNKNOWN tasks, services where fail-open would hold,
  start-order drift. Exit 1 when something
  needs attention, 0 when not, 2 on error.
* ``plan``: one poller pass in dry-run mode: exactly which instances it would deregister and why.

``redrive`` is the one command that writes: it replays the dead-letter queue through the deployed
reactor (Lambda Invoke) and deletes what the reactor handled (SQS), so it gets plain clients, never
the read-only ones (``--dry-run`` only lists). The logic is in ``cloudmap_reactor.redrive``.
Exit 0 when nothing failed, 1 when some messages failed and stay queued, 2 when it could not run.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import asdict, replace
from typing import Any

import boto3
from botocore.exceptions import BotoCoreError, ClientError

from cloudmap_reactor import __version__, redrive, review
from cloudmap_reactor.adapters.clients import CLIENT_CONFIG
from cloudmap_reactor.adapters.ecs import EcsReader
from cloudmap_reactor.config import ConfigError, Policy
from cloudmap_reactor.core.diagnosis import ServiceDiagnosis
from cloudmap_reactor.core.model import TagScope
from cloudmap_reactor.core.ports import AwsCallFailed
from cloudmap_reactor.poller.reading import PassReader

READ_OPERATIONS = ("Describe", "List", "Get")


class MutationRefused(RuntimeError):
    """A non-read AWS operation was attempted from the read-only commands."""


def refuse_mutations(model: Any, **_: Any) -> None:
    """botocore ``before-call`` hook: only reads leave this process."""
    if not model.name.startswith(READ_OPERATIONS):
        raise MutationRefused(f"{model.service_model.service_name}:{model.name} is not a read operation")


def read_only_clients(profile: str | None, region: str | None) -> tuple[Any, Any, Any]:
    """ECS, Cloud Map and CloudFormation clients that can only read."""
    session = boto3.Session(profile_name=profile, region_name=region)
    ecs: Any = session.client("ecs", config=CLIENT_CONFIG)
    cloudmap: Any = session.client("servicediscovery", config=CLIENT_CONFIG)
    cloudformation: Any = session.client("cloudformation", config=CLIENT_CONFIG)
    for client in (ecs, cloudmap, cloudformation):
        client.meta.events.register_first("before-call", refuse_mutations)
    return ecs, cloudmap, cloudformation


def describe_stack(cloudformation: Any, name: str) -> dict[str, Any]:
    """The stack as CloudFormation describes it (parameters included)."""
    stack: dict[str, Any] = cloudformation.describe_stacks(StackName=name)["Stacks"][0]
    return stack


def policy_of(args: argparse.Namespace, cloudformation: Any) -> Policy:
    """The deployed stack's policy (``--stack``), or the defaults with the command line's overrides."""
    if args.stack:
        stack = describe_stack(cloudformation, args.stack)
        parameters = {p["ParameterKey"]: p.get("ParameterValue", "") for p in stack.get("Parameters", [])}
        return Policy.from_stack_parameters(parameters)
    overrides = {"TAG_SCOPE": args.tag_scope or "", "STALE_CHECK_ALL_ENDPOINTS": str(args.all_endpoints).lower()}
    if args.min_healthy_percent is not None:
        overrides["MIN_HEALTHY_PERCENT"] = args.min_healthy_percent
    return Policy.from_env(overrides)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cloudmap-reactor", description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", action="version", version=f"cloudmap-reactor {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="command")
    read_only = _read_only_options()
    commands.add_parser(
        "doctor",
        parents=[read_only],
        help="read-only: Cloud Map next to ECS, per service; exit 1 when something needs attention",
        description="Read-only: Cloud Map next to ECS for every Service Connect or service-discovery service.",
    )
    commands.add_parser(
        "plan",
        parents=[read_only],
        help="read-only: what one poller pass would deregister now, and why",
        description="Read-only: one poller pass in dry-run mode: which instances it would deregister and why.",
    )
    _redrive_options(
        commands.add_parser(
            "redrive",
            help="replay the dead-letter queue through the reactor (writes: Lambda Invoke, SQS delete)",
            description="Replay the cloudmap-reactor dead-letter queue through TaskStateReactorFunction, "
            "deleting each message the function handled.",
        )
    )
    return parser


def _read_only_options() -> argparse.ArgumentParser:
    """The options of doctor and plan (a parent parser: each subcommand gets its own copy)."""
    options = argparse.ArgumentParser(add_help=False)
    options.add_argument("--cluster", action="append", default=[], help="cluster name or ARN (repeat; default: all)")
    options.add_argument("--profile", help="AWS profile (default: the usual credential chain)")
    options.add_argument("--region", help="AWS region (default: the profile's or AWS_REGION)")
    options.add_argument("--json", action="store_true", help="machine-readable output")
    options.add_argument("--stack", help="judge with this deployed stack's parameters (CloudFormation stack name)")
    options.add_argument("--min-healthy-percent", help="fail-open guard (default: the policy's, 50)")
    options.add_argument("--tag-scope", choices=[s.value for s in TagScope], help="default: the policy's, opt-out")
    options.add_argument("--all-endpoints", action="store_true", help="start order: every endpoint is a dependency")
    return options


def _redrive_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--stack-name", help="stack whose outputs name the queue and the function")
    parser.add_argument("--region", help="AWS region (default: the profile's or the environment's)")
    parser.add_argument("--profile", help="AWS named profile")
    parser.add_argument("--queue-url", help=f"dead-letter queue URL (default: the stack's {redrive.QUEUE_URL_OUTPUT})")
    parser.add_argument(
        "--function-name", help=f"function name or ARN (default: the stack's {redrive.FUNCTION_OUTPUT})"
    )
    parser.add_argument("--max-messages", type=_at_least(1), help="replay at most this many messages (default: all)")
    parser.add_argument(
        "--visibility-timeout",
        type=_at_least(redrive.MIN_VISIBILITY_TIMEOUT),
        default=redrive.DEFAULT_VISIBILITY_TIMEOUT,
        help="seconds received messages stay hidden while being replayed "
        f"(default: {redrive.DEFAULT_VISIBILITY_TIMEOUT}, at least {redrive.MIN_VISIBILITY_TIMEOUT})",
    )
    parser.add_argument("--dry-run", action="store_true", help="only list what would be replayed")


def _at_least(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = int(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, not {value}")
        return value

    parse.__name__ = "integer"  # argparse's "invalid integer value: 'x'"
    return parse


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "redrive":  # writes, with its own clients and error handling
        return _redrive(args)
    # doctor and plan only read: their clients come from read_only_clients (refuse_mutations).
    try:
        return _doctor(args) if args.command == "doctor" else _plan(args)
    except (AwsCallFailed, ClientError, BotoCoreError, MutationRefused, ConfigError) as exc:
        print(f"cloudmap-reactor {args.command}: {exc}", file=sys.stderr)
        return 2


def _read_only_fleet(args: argparse.Namespace) -> tuple[PassReader, Policy, list[str]]:
    """The poller's reader over read-only clients, the policy to judge with, and the clusters to look at."""
    ecs, cloudmap, cloudformation = read_only_clients(args.profile, args.region)
    policy = policy_of(args, cloudformation)
    clusters = args.cluster or list(policy.cluster_arns) or EcsReader(ecs).list_cluster_arns()
    policy = replace(policy, cluster_arns=tuple(clusters))
    return review.reader_for(ecs, cloudmap, policy), policy, clusters


def _doctor(args: argparse.Namespace) -> int:
    reader, policy, clusters = _read_only_fleet(args)
    for index, cluster in enumerate(clusters, start=1):  # read concurrently; progress goes to stderr
        print(f"[{index}/{len(clusters)}] scanning {cluster} …", file=sys.stderr, flush=True)
    report = review.doctor(reader, policy, clusters)
    diagnosis = report.diagnosis
    skipped = [{"cluster": s.cluster_arn, "reason": s.reason, "error": s.error} for s in report.skipped]
    if args.json:
        services = [{**asdict(s), "needs_attention": s.needs_attention} for s in diagnosis.services]
        attention = diagnosis.needs_attention or bool(skipped)
        print(
            json.dumps({"needs_attention": attention, "services": services, "clusters_not_scanned": skipped}, indent=2)
        )
    else:
        print(_doctor_table(diagnosis.services))
        for s in skipped:
            print(f"could not read {s['cluster']} ({s['reason']}): {s['error']}")
    return 1 if diagnosis.needs_attention or skipped else 0


def _doctor_table(services: list[ServiceDiagnosis]) -> str:
    header = (
        *("cluster/service", "discovery", "tasks", "inst", "no task", "stopping", "no inst"),
        *("unhealthy", "unknown", "fail-open", "stale", "http-check", "status"),
    )
    rows = [header]
    for s in services:
        rows.append(
            (
                f"{s.cluster_arn.rsplit('/', 1)[-1]}/{s.service_name}" + ("" if s.in_scope else " (out of scope)"),
                ",".join(sorted({name for name, _ in s.discovery})) or "-",
                str(s.running_tasks),
                str(s.registered_instances),
                str(len(s.unmatched_instances)),
                str(len(s.stopping_registered)),
                str(len(s.tasks_without_instance)),
                str(len(s.unhealthy_registered)),
                str(s.unknown_health),
                "yes" if s.fail_open else "no",
                ",".join(s.stale_endpoints) if s.stale_tasks else "-",
                "INVALID" if s.http_check_error else (s.http_check or "-").split(" on ")[0].removeprefix("GET "),
                "ATTENTION" if s.needs_attention else "ok",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows]
    details = (
        [
            f"  {s.service_name}: instances matching no task: {', '.join(s.unmatched_instances)}"
            for s in services
            if s.unmatched_instances
        ]
        + [
            f"  {s.service_name}: stopping or stopped but still registered: {', '.join(s.stopping_registered)}"
            for s in services
            if s.stopping_registered
        ]
        + [
            f"  {s.service_name}: running but registered nowhere: {', '.join(s.tasks_without_instance)}"
            for s in services
            if s.tasks_without_instance
        ]
        + [
            f"  {s.service_name}: UNHEALTHY and still registered: {', '.join(s.unhealthy_registered)}"
            for s in services
            if s.unhealthy_registered
        ]
        + [f"  {s.service_name}: not probed: {s.http_check_error}" for s in services if s.http_check_error]
        + [
            f"  {s.service_name}: {s.unknown_health} task(s) without a container health check (UNKNOWN); "
            "tag cloudmap-reactor:http-check to have them probed"
            for s in services
            if s.unknown_health and not s.http_check and not s.http_check_error and s.discovery
        ]
    )
    return "\n".join([*lines, *(["", *details] if details else [])])


def _plan(args: argparse.Namespace) -> int:
    reader, policy, _ = _read_only_fleet(args)
    result = review.plan(reader, policy)
    plan = review.plan_report(result)
    if args.json:
        print(json.dumps(plan, indent=2))
    else:
        for d in plan["deregister"]:
            print(f"would deregister {d['instance_id']} from {d['cloudmap_service_id']} "
                  f"({d['service']}, {d['reason']}, rule {d['rule']})")  # fmt: skip
        for name in plan["redeploy"]:
            print(f"would force a new deployment of {name} (start order)")
        for held in plan["fail_open"]:
            services, sid = ", ".join(held["services"]), held["cloudmap_service_id"]
            print(f"would keep {services}'s unhealthy tasks in {sid}: fail-open "
                  f"({held['healthy_registered']} healthy registered, {held['required']} required)")  # fmt: skip
        for instance in plan["orphan_instances"]:
            print(f"would leave {instance}: it matches no task ECS knows (counted as an orphan)")
        for name in plan["stale_clients"]:
            print(f"stale Service Connect client: {name} (tasks started before an endpoint they depend on)")
        for skipped in plan["clusters_not_scanned"]:
            print(f"could not read {skipped['cluster']} ({skipped['reason']}): {skipped['error']}")
        if not any(plan.values()):
            print("nothing to do")
    return 2 if result.skipped_clusters else 0


def _redrive(args: argparse.Namespace) -> int:
    """Not read-only: plain clients, so it can invoke the function and delete what it handled."""
    try:
        session = boto3.Session(profile_name=args.profile, region_name=args.region)
        queue_url, function_name = redrive.resolve_target(
            session.client("cloudformation"),
            stack_name=args.stack_name,
            queue_url=args.queue_url,
            function_name=args.function_name,
        )
        queue = redrive.SqsDeadLetterQueue(
            session.client("sqs"),
            queue_url,
            visibility_timeout=args.visibility_timeout,
            wait_seconds=redrive.WAIT_SECONDS,
        )
        deliver = redrive.LambdaDelivery(session.client("lambda", config=redrive.LAMBDA_CONFIG), function_name)
        print(f"{'Dry run: ' if args.dry_run else ''}redriving {queue_url}\n  through {function_name}")
        summary = redrive.redrive(queue, deliver, max_messages=args.max_messages, dry_run=args.dry_run)
    except (redrive.SetupError, BotoCoreError, ClientError) as exc:
        print(f"cloudmap-reactor redrive: {exc}", file=sys.stderr)
        return 2
    print(summary.line(dry_run=args.dry_run))
    return 1 if summary.failed else 0


if __name__ == "__main__":
    sys.exit(main())
