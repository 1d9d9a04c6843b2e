"""The `cloudmap-reactor` command: look at an account before deploying, replay the dead-letter queue.

``doctor`` and ``plan`` use the caller's normal AWS credentials, profile and region (or the local
emulator through ``AWS_ENDPOINT_URL``), the same adapters and the same decisions as the functions.
They can only read: every client they create refuses, before sending, any operation that is not a
Describe, List or Get (and, for DynamoDB, Query), so no deregistration, registration, deployment
or ledger write is reachable from them. The quarantine ledger is read when its table is known:
the deployed stack's ``LedgerTableName`` output (``--stack``) or ``--ledger-table``.

* ``doctor``: per cluster and per Service Connect / service-discovery service, Cloud Map next to
  ECS: discovery names, instances vs running tasks, instances that match no task ECS knows (the
  task-id assumption does not hold, or a leak), instances of stopping tasks, tasks with no
  instance, UNHEALTHY tasks still registered, UNKNOWN tasks, services where fail-open would hold,
  start-order drift, tasks ECS stopped and left registered, instances whose attribute keys differ
  from their siblings' (say, a restore that did not put back what ECS wrote), and per service the
  quarantined instances and what the poller would do with them. Exit 1 when something needs
  attention, 0 when not, 2 on error.
* ``plan``: one poller pass in dry-run mode: exactly which instances it would deregister and why,
  and with the ledger which quarantined instances it would register again, forget or replace.

``redrive`` is the one command that writes: it replays the dead-letter queue through the deployed
reactor (Lambda Invoke) and deletes what the reactor handled (SQS), so it gets plain clients, never
the read-only ones (``--dry-run`` only lists). The logic is in ``cloudmap_reactor.redrive``.
Exit 0 when nothing failed, 1 when some messages failed and stay queued, 2 when it could not run.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, replace
from typing import Any, NamedTuple

import boto3
from botocore.exceptions import BotoCoreError, ClientError

from cloudmap_reactor import __version__, redrive, review
from cloudmap_reactor.adapters.clients import CLIENT_CONFIG
from cloudmap_reactor.adapters.clusters import ClusterDirectory
from cloudmap_reactor.adapters.ecs import EcsReader
from cloudmap_reactor.adapters.ledger import DynamoDbLedger
from cloudmap_reactor.config import ConfigError, Policy
from cloudmap_reactor.core.diagnosis import ServiceDiagnosis
from cloudmap_reactor.core.model import TagScope
from cloudmap_reactor.core.ports import AwsCallFailed
from cloudmap_reactor.poller.reading import PassReader

READ_OPERATIONS = ("Describe", "List", "Get")
# Reads named otherwise, per service (botocore's service name). DynamoDB's GetItem is a Get.
READ_OPERATIONS_OF = {"dynamodb": ("Query",)}
LEDGER_TABLE_OUTPUT = "LedgerTableName"  # the stack output naming the quarantine ledger (template.yaml)


class MutationRefused(RuntimeError):
    """A non-read AWS operation was attempted from the read-only commands."""


def refuse_mutations(model: Any, **_: Any) -> None:
    """botocore ``before-call`` hook: only reads leave this process."""
    service = model.service_model.service_name
    if not model.name.startswith(READ_OPERATIONS + READ_OPERATIONS_OF.get(service, ())):
        raise MutationRefused(f"{service}:{model.name} is not a read operation")


class ReadOnlyClients(NamedTuple):
    ecs: Any
    cloudmap: Any
    cloudformation: Any
    dynamodb: Any  # the quarantine ledger: Query and GetItem only


def read_only_clients(profile: str | None, region: str | None) -> ReadOnlyClients:
    """ECS, Cloud Map, CloudFormation and DynamoDB clients that can only read."""
    session = boto3.Session(profile_name=profile, region_name=region)
    clients = ReadOnlyClients(
        ecs=session.client("ecs", config=CLIENT_CONFIG),
        cloudmap=session.client("servicediscovery", config=CLIENT_CONFIG),
        cloudformation=session.client("cloudformation", config=CLIENT_CONFIG),
        dynamodb=session.client("dynamodb", config=CLIENT_CONFIG),
    )
    for client in clients:
        client.meta.events.register_first("before-call", refuse_mutations)
    return clients


def describe_stack(cloudformation: Any, name: str) -> dict[str, Any]:
    """The stack as CloudFormation describes it (parameters included)."""
    stack: dict[str, Any] = cloudformation.describe_stacks(StackName=name)["Stacks"][0]
    return stack


def policy_of(args: argparse.Namespace, cloudformation: Any) -> Policy:
    """The deployed stack's policy (``--stack``), or the defaults with the command line's overrides.

    Its ``ledger_table`` is the quarantine ledger to read: ``--ledger-table``, else the stack's
    ``LedgerTableName`` output; empty (not read) without either. It is set in the policy, as
    ``LEDGER_TABLE`` is in the poller's, because the decisions follow it (readiness, records).
    """
    if args.stack:
        stack = describe_stack(cloudformation, args.stack)
        parameters = {p["ParameterKey"]: p.get("ParameterValue", "") for p in stack.get("Parameters", [])}
        outputs = {o["OutputKey"]: o.get("OutputValue", "") for o in stack.get("Outputs", [])}
        table = args.ledger_table or outputs.get(LEDGER_TABLE_OUTPUT, "")
        return Policy.from_stack_parameters(parameters, env={"LEDGER_TABLE": table})
    overrides = {
        "TAG_SCOPE": args.tag_scope or "",
        "STALE_CHECK_ALL_ENDPOINTS": str(args.all_endpoints).lower(),
        "LEDGER_TABLE": args.ledger_table or "",
    }
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
        help="read-only: what one poller pass would deregister, register again or forget now, and why",
        description="Read-only: one poller pass in dry-run mode: which instances it would deregister and why; "
        "with the quarantine ledger, which quarantined instances it would register again, forget or replace.",
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
    options.add_argument(
        "--stack",
        help="judge with this deployed stack's parameters and read its quarantine ledger (CloudFormation stack name)",
    )
    options.add_argument(
        "--ledger-table",
        metavar="NAME",
        help=f"the quarantine ledger (DynamoDB table) to read (default: the stack's {LEDGER_TABLE_OUTPUT} "
        "output with --stack; otherwise not read)",
    )
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


class ReadOnlyFleet(NamedTuple):
    reader: PassReader
    policy: Policy
    clusters: list[str]
    ledger: DynamoDbLedger | None  # None: no ledger table known, so the quarantine is not read


def _read_only_fleet(args: argparse.Namespace) -> ReadOnlyFleet:
    """The poller's reader and ledger over read-only clients, the policy to judge with, and the clusters."""
    clients = read_only_clients(args.profile, args.region)
    policy = policy_of(args, clients.cloudformation)
    clusters = args.cluster or list(policy.cluster_arns) or _clusters_in_scope(clients.ecs, policy)
    policy = replace(policy, cluster_arns=tuple(clusters))
    ledger = DynamoDbLedger(clients.dynamodb, policy.ledger_table) if policy.ledger_table else None
    return ReadOnlyFleet(review.reader_for(clients.ecs, clients.cloudmap, policy), policy, clusters, ledger)


def _clusters_in_scope(ecs: Any, policy: Policy) -> list[str]:
    """Every cluster of the account and region, or those carrying the stack's ``ClusterTag``."""
    tag = policy.cluster_tag_pair
    return ClusterDirectory(ecs, *tag).tagged() if tag else EcsReader(ecs).list_cluster_arns()


NO_LEDGER = "quarantine ledger not read (give --stack or --ledger-table): quarantined instances are not shown"


def _doctor(args: argparse.Namespace) -> int:
    fleet = _read_only_fleet(args)
    for index, cluster in enumerate(fleet.clusters, start=1):  # read concurrently; progress goes to stderr
        print(f"[{index}/{len(fleet.clusters)}] scanning {cluster} …", file=sys.stderr, flush=True)
    report = review.doctor(fleet.reader, fleet.policy, fleet.clusters, fleet.ledger)
    diagnosis = report.diagnosis
    skipped = [{"cluster": s.cluster_arn, "reason": s.reason, "error": s.error} for s in report.skipped]
    attention = diagnosis.needs_attention or bool(skipped) or report.ledger_error is not None
    if args.json:
        services = [{**asdict(s), "needs_attention": s.needs_attention} for s in diagnosis.services]
        ledger = {
            "table": fleet.policy.ledger_table or None,
            "read": report.ledger_read,
            "records": report.ledger_records,
            "unreadable_items": report.ledger_unreadable,
            "error": report.ledger_error,
        }
        document = {"needs_attention": attention, "services": services, "clusters_not_scanned": skipped}
        print(json.dumps({**document, "ledger": ledger}, indent=2))
    else:
        print(_doctor_table(diagnosis.services))
        for s in skipped:
            print(f"could not read {s['cluster']} ({s['reason']}): {s['error']}")
        print(_ledger_line(fleet.policy.ledger_table, report))
    return 1 if attention else 0


def _ledger_line(table: str, report: review.DoctorReport) -> str:
    if report.ledger_error is not None:
        return f"could not read the quarantine ledger {table}: {report.ledger_error}"
    if not report.ledger_read:
        return NO_LEDGER
    unreadable = f", {report.ledger_unreadable} unreadable item(s) skipped" if report.ledger_unreadable else ""
    return f"quarantine ledger {table}: {report.ledger_records} record(s){unreadable}"


def _doctor_table(services: list[ServiceDiagnosis]) -> str:
    header = (
        *("cluster/service", "discovery", "tasks", "inst", "no task", "stopping", "no inst"),
        *("unhealthy", "unknown", "quar", "fail-open", "stale", "http-check", "status"),
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
                "-" if s.quarantined is None else str(s.quarantined),
                "yes" if s.fail_open else "no",
                ",".join(s.stale_endpoints) if s.stale_tasks else "-",
                "INVALID" if s.http_check_error else (s.http_check or "-").split(" on ")[0].removeprefix("GET "),
                "ATTENTION" if s.needs_attention else "ok",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows]
    details = [line for s in services for line in _doctor_details(s)]
    return "\n".join([*lines, *(["", *details] if details else [])])


def _doctor_details(s: ServiceDiagnosis) -> list[str]:
    """The lines under the table for one service: what needs attention first, then the quarantine."""
    name = s.service_name
    stopping = [i for i in s.stopping_registered if i not in s.stopped_registered]
    attention: list[tuple[str, Sequence[str]]] = [
        ("instances matching no task", s.unmatched_instances),
        ("ECS left it registered after its task stopped", s.stopped_registered),
        ("stopping but still registered", stopping),
        ("running but registered nowhere", s.tasks_without_instance),
        ("UNHEALTHY and still registered", s.unhealthy_registered),
    ]
    quarantine: list[tuple[str, Sequence[str]]] = [
        ("quarantined (taken out for health, task running)", s.quarantined_instances),
        ("recovered: the poller would register it again", s.would_restore),
        ("quarantined, but its task no longer runs: the poller would forget it", s.would_forget),
        ("quarantined too long: the poller would stop its task (ECS replaces it)", s.would_replace),
    ]
    lines = [f"  {name}: {what}: {', '.join(ids)}" for what, ids in attention if ids]
    lines += [
        f"  {name}: attribute keys differ from its siblings' in {m.cloudmap_service_id}: {m.instance_id} ("
        + "; ".join(part for part in (_keys("missing", m.missing), _keys("extra", m.extra)) if part)
        + ")"
        for m in s.attribute_key_mismatches
    ]
    lines += [f"  {name}: {what}: {', '.join(ids)}" for what, ids in quarantine if ids]
    if s.http_check_error:
        lines.append(f"  {name}: not probed: {s.http_check_error}")
    if s.unknown_health and not s.http_check and not s.http_check_error and s.discovery:
        lines.append(
            f"  {name}: {s.unknown_health} task(s) without a container health check (UNKNOWN); "
            "tag cloudmap-reactor:http-check to have them probed"
        )
    return lines


def _keys(what: str, keys: tuple[str, ...]) -> str:
    return f"{what} {', '.join(keys)}" if keys else ""


def _plan(args: argparse.Namespace) -> int:
    fleet = _read_only_fleet(args)
    result = review.plan(fleet.reader, fleet.policy, fleet.ledger)
    plan = review.plan_report(result, fleet.policy.ledger_table if fleet.ledger is not None else None)
    print(json.dumps(plan, indent=2) if args.json else "\n".join([*_quarantine_lines(plan), *_plan_lines(plan)]))
    return 2 if result.skipped_clusters else 0


def _quarantine_lines(plan: dict[str, Any]) -> list[str]:
    """``plan``'s text for the quarantine: what is out, and what would come back, be forgotten or replaced."""
    lines = []
    for q in plan["quarantined"]:
        lines.append(
            f"quarantined {q['instance_id']} in {q['cloudmap_service_id']} ({q['service']}, {q['reason']}, "
            f"rule {q['rule']}, for {q['quarantined_seconds']} s)"
        )
    for r in plan["restore"]:
        lines.append(
            f"would register again {r['instance_id']} in {r['cloudmap_service_id']} "
            f"({r['service']}, quarantined for {r['reason']}) (recovered)"
        )
    for r in plan["restore_held"]:
        lines.append(
            f"would keep {r['instance_id']} out of {r['cloudmap_service_id']} ({r['service']}) "
            "though it recovered: ReturnOnRecovery=false"
        )
    for f in plan["forget"]:
        lines.append(
            f"would forget {f['instance_id']} in {f['cloudmap_service_id']} "
            f"({f['service']}, quarantined for {f['reason']}) (task stopped)"
        )
    for r in plan["replace"]:
        lines.append(
            f"would stop task {r['task_arn']} ({r['service']}, quarantined for {r['reason']} "
            "longer than ReplaceAfterSeconds) so that ECS replaces it"
        )
    return lines


def _plan_lines(plan: dict[str, Any]) -> list[str]:
    """``plan``'s text for removals, redeployments and findings; then what it could not read."""
    lines = []
    for d in plan["deregister"]:
        lines.append(
            f"would deregister {d['instance_id']} from {d['cloudmap_service_id']} "
            f"({d['service']}, {d['reason']}, rule {d['rule']})"
        )
    for name in plan["redeploy"]:
        lines.append(f"would force a new deployment of {name} (start order)")
    for held in plan["fail_open"]:
        services, sid = ", ".join(held["services"]), held["cloudmap_service_id"]
        lines.append(
            f"would keep {services}'s unhealthy tasks in {sid}: fail-open "
            f"({held['healthy_registered']} healthy registered, {held['required']} required)"
        )
    for instance in plan["orphan_instances"]:
        lines.append(f"would leave {instance}: it matches no task ECS knows (counted as an orphan)")
    for name in plan["stale_clients"]:
        lines.append(f"stale Service Connect client: {name} (tasks started before an endpoint they depend on)")
    for skipped in plan["clusters_not_scanned"]:
        lines.append(f"could not read {skipped['cluster']} ({skipped['reason']}): {skipped['error']}")
    if not any(value for key, value in plan.items() if key not in ("ledger", "quarantined")):
        lines.append("nothing to do")
    if plan["ledger"]["table"] is None:
        lines.append(NO_LEDGER)
    elif plan["ledger"]["unreadable_items"]:
        lines.append(f"skipped {plan['ledger']['unreadable_items']} unreadable item(s) of the quarantine ledger")
    return lines


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
