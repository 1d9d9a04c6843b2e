"""The `cloudmap-reactor` command: look at an account before deploying, operate a deployed stack.

Every report starts with the account (``sts:GetCallerIdentity``), the region (and where it came
from), the stack (``--stack``, found by name) and what the command found; an empty account or
region is a loud warning, not a clean bill of health. Every command has ``--json``.

``doctor``, ``plan`` and ``status`` use the caller's normal AWS credentials, profile and region
(or the local emulator through ``AWS_ENDPOINT_URL``), the same adapters and the same decisions as
the functions. They can only read: every client they create refuses, before sending, any
operation that is not a Describe, List or Get (and, for DynamoDB, Query), so no deregistration,
registration, deployment or ledger write is reachable from them. The quarantine ledger is read
when its table is known: the deployed stack's ``LedgerTableName`` output (``--stack``) or
``--ledger-table``.

* ``doctor``: per cluster and per Service Connect / service-discovery service, Cloud Map next to
  ECS: discovery names, instances vs running tasks, instances that match no task ECS knows (the
  task-id assumption does not hold, or a leak), instances of stopping tasks, tasks with no
  instance, UNHEALTHY tasks still registered, UNKNOWN tasks, services where fail-open would hold,
  start-order drift, tasks ECS stopped and left registered, instances whose attribute keys differ
  from their siblings' (say, a restore that did not put back what ECS wrote), and per service the
  quarantined instances and what the poller would do with them. Exit 1 when something needs
  attention (an unreadable cluster, no cluster at all), 0 when not, 2 on error.
* ``plan``: one poller pass in dry-run mode: exactly which instances it would deregister and why,
  and with the ledger which quarantined instances it would register again, forget or replace.
  Exit 1 when part of the account could not be read or no cluster was found.
* ``status``: one screen on a deployed stack (``cloudmap_reactor.status``).

``undo`` (``cloudmap_reactor.undo``) is a dry run unless ``--apply``; with it, its clients may
also send exactly ``servicediscovery:RegisterInstance`` and ``dynamodb:DeleteItem``. ``redrive``
replays the dead-letter queue through the deployed reactor (Lambda Invoke) and deletes what the
reactor handled (SQS), so it gets plain clients (``--dry-run`` only lists). The logic is in
``cloudmap_reactor.redrive``. Exit 0 when nothing failed, 1 when some messages failed and stay
queued, 2 when it could not run.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, replace
from typing import Any, NamedTuple

from botocore.exceptions import BotoCoreError, ClientError

from cloudmap_reactor import __version__, redrive, review, status, undo
from cloudmap_reactor.adapters.clients import CLIENT_CONFIG
from cloudmap_reactor.adapters.cloudmap import CloudMapDeregistrar
from cloudmap_reactor.adapters.clusters import ClusterDirectory
from cloudmap_reactor.adapters.ecs import EcsReader
from cloudmap_reactor.adapters.ledger import DynamoDbLedger
from cloudmap_reactor.config import ConfigError, Policy
from cloudmap_reactor.context import (
    CommandError,
    Context,
    aws_target,
    open_context,
    stack_outputs,
    stack_parameters,
    with_context,
)
from cloudmap_reactor.core.diagnosis import ServiceDiagnosis
from cloudmap_reactor.core.model import TagScope
from cloudmap_reactor.core.ports import AwsCallFailed
from cloudmap_reactor.poller.acting import Actor
from cloudmap_reactor.poller.reading import PassReader

READ_OPERATIONS = ("Describe", "List", "Get")
# Reads named otherwise, per service (botocore's service name). DynamoDB's GetItem is a Get.
READ_OPERATIONS_OF = {"dynamodb": ("Query",)}
# The only writes ``undo --apply`` may send: put an instance back, delete its quarantine record.
UNDO_WRITES = {"servicediscovery": ("RegisterInstance",), "dynamodb": ("DeleteItem",)}
LEDGER_TABLE_OUTPUT = "LedgerTableName"  # the stack output naming the quarantine ledger (template.yaml)
ENABLED_PARAMETER = "Enabled"  # the emergency stop (template.yaml, when present)
FAILURES = (AwsCallFailed, ClientError, BotoCoreError, ConfigError, CommandError)


class MutationRefused(RuntimeError):
    """A non-read AWS operation was attempted from the read-only commands."""


def refuse_mutations(model: Any, allowed: Mapping[str, tuple[str, ...]] | None = None, **_: Any) -> None:
    """botocore ``before-call`` hook: only reads (and ``allowed`` writes, per service) leave this process."""
    service = model.service_model.service_name
    permitted = READ_OPERATIONS + READ_OPERATIONS_OF.get(service, ()) + (allowed or {}).get(service, ())
    if not model.name.startswith(permitted):
        raise MutationRefused(f"{service}:{model.name} is not a read operation")


class ReadOnlyClients(NamedTuple):
    ecs: Any
    cloudmap: Any
    cloudformation: Any
    dynamodb: Any  # the quarantine ledger: Query and GetItem only
    sts: Any  # GetCallerIdentity: who and where


def read_only_client(session: Any, service: str, writes: Mapping[str, tuple[str, ...]] | None = None) -> Any:
    """A client of ``service`` that refuses, before sending, every operation but reads and ``writes``."""
    client = session.client(service, config=CLIENT_CONFIG)
    allowed = dict(writes or {})
    client.meta.events.register_first("before-call", lambda model, **kw: refuse_mutations(model, allowed, **kw))
    return client


def read_only_clients(session: Any, writes: Mapping[str, tuple[str, ...]] | None = None) -> ReadOnlyClients:
    """ECS, Cloud Map, CloudFormation, DynamoDB and STS clients that can only read (and ``writes``)."""
    return ReadOnlyClients(
        *(
            read_only_client(session, s, writes)
            for s in ("ecs", "servicediscovery", "cloudformation", "dynamodb", "sts")
        )
    )


def describe_stack(cloudformation: Any, name: str) -> dict[str, Any]:
    """The stack as CloudFormation describes it (parameters and outputs included)."""
    try:
        stack: dict[str, Any] = cloudformation.describe_stacks(StackName=name)["Stacks"][0]
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") != "ValidationError":  # CloudFormation's "does not exist"
            raise
        region = cloudformation.meta.region_name
        raise CommandError(f"stack {name} not found in {region} (wrong region or account?): {exc}") from exc
    return stack


def _start(args: argparse.Namespace, writes: Mapping[str, tuple[str, ...]] | None = None) -> tuple[Context, Any]:
    """The clients of a read-only command and its context: caller, region, the stack when named."""
    target = aws_target(args.profile, args.region)
    clients = read_only_clients(target.session, writes)
    stack = describe_stack(clients.cloudformation, args.stack) if args.stack else None
    return open_context(clients.sts, target, args.stack, stack), clients


# Options of doctor and plan that override a policy field, with or without --stack: field -> option.
OVERRIDES = {
    "min_healthy_percent": "min_healthy_percent",
    "tag_scope": "tag_scope",
    "stale_check_every_endpoint": "all_endpoints",
}


def policy_of(args: argparse.Namespace, context: Context) -> Policy:
    """The deployed stack's policy (``--stack``), or the defaults; either with the command line's overrides.

    Its ``ledger_table`` is the quarantine ledger to read: ``--ledger-table``, else the stack's
    ``LedgerTableName`` output; empty (not read) without either. It is set in the policy, as
    ``LEDGER_TABLE`` is in the poller's, because the decisions follow it (readiness, records).
    """
    given = {name: getattr(args, option) for name, option in OVERRIDES.items() if getattr(args, option)}
    table = args.ledger_table or stack_outputs(context.stack).get(LEDGER_TABLE_OUTPUT, "")
    env = {"LEDGER_TABLE": table, "AWS_REGION": context.target.region}
    overridden = f" overridden by {', '.join('--' + OVERRIDES[n].replace('_', '-') for n in given)}" if given else ""
    if context.stack is None:
        context.settings = f"built-in defaults (no --stack: not a deployed stack's parameters){overridden}"
        return Policy.from_env({**env, **{Policy.environment_of(n)[0]: str(v).lower() for n, v in given.items()}})
    parameters = stack_parameters(context.stack)
    context.settings = f"the deployed stack's {len(parameters)} parameters{overridden}"
    for name, value in given.items():
        parameters[Policy.environment_of(name)[1] or ""] = str(value).lower()
    return Policy.from_stack_parameters(parameters, env=env)


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
    commands.add_parser(
        "status",
        parents=[_common_options(stack_required=True), _ledger_option()],
        help="read-only: one screen on a deployed stack: version, switches, quarantine, dead letters, alarms",
        description="Read-only: the deployed stack's version and switches, the quarantined instances, the "
        "dead-letter queue's depth, its alarms in ALARM and the poller's last heartbeat.",
    )
    _undo_options(
        commands.add_parser(
            "undo",
            parents=[_common_options(), _ledger_option()],
            help="register again the instances the quarantine took out in a time range (dry run unless --apply)",
            description="Register again, from the quarantine ledger, the instances taken out for health in a "
            "time range whose task ECS still reports RUNNING, with exactly their recorded attributes; then "
            "delete their records. A dry run unless --apply. Removals of stopping tasks cannot be undone. "
            "Disable the functions first (Enabled=false), or the poller may take them out again.",
        )
    )
    _redrive_options(
        commands.add_parser(
            "redrive",
            parents=[_common_options(stack_flags=("--stack", "--stack-name"))],
            help="replay the dead-letter queue through the reactor (writes: Lambda Invoke, SQS delete)",
            description="Replay the cloudmap-reactor dead-letter queue through TaskStateReactorFunction, "
            "deleting each message the function handled.",
        )
    )
    return parser


def _common_options(
    *, stack_required: bool = False, stack_flags: tuple[str, ...] = ("--stack",)
) -> argparse.ArgumentParser:
    """What every command takes: where to look, and how to answer."""
    options = argparse.ArgumentParser(add_help=False)
    options.add_argument("--profile", help="AWS named profile (default: AWS_PROFILE, else the default chain)")
    options.add_argument(
        "--region",
        help="AWS region (default: AWS_REGION, else AWS_DEFAULT_REGION, else the profile's region; "
        "the report says which was used)",
    )
    options.add_argument("--json", action="store_true", help="machine-readable output")
    options.add_argument(
        *stack_flags,
        dest="stack",
        metavar="NAME",
        required=stack_required,
        help="the deployed CloudFormation stack (its parameters and outputs are read)",
    )
    return options


def _ledger_option() -> argparse.ArgumentParser:
    options = argparse.ArgumentParser(add_help=False)
    options.add_argument(
        "--ledger-table",
        metavar="NAME",
        help=f"the quarantine ledger (DynamoDB table) to read (default: the stack's {LEDGER_TABLE_OUTPUT} "
        "output with --stack; otherwise not read)",
    )
    return options


def _read_only_options() -> argparse.ArgumentParser:
    """The options of doctor and plan (a parent parser: each subcommand gets its own copy)."""
    options = argparse.ArgumentParser(add_help=False, parents=[_common_options(), _ledger_option()])
    options.add_argument("--cluster", action="append", default=[], help="cluster name or ARN (repeat; default: all)")
    options.add_argument(
        "--min-healthy-percent", help="fail-open guard (default: the stack's with --stack, else the policy's, 50)"
    )
    options.add_argument("--tag-scope", choices=[s.value for s in TagScope], help="default: the policy's, opt-out")
    options.add_argument("--all-endpoints", action="store_true", help="start order: every endpoint is a dependency")
    return options


def _undo_options(parser: argparse.ArgumentParser) -> None:
    when = parser.add_mutually_exclusive_group(required=True)
    when.add_argument("--since", type=_duration, metavar="DURATION", help="taken out in the last 90s, 30m, 2h, 1d")
    when.add_argument("--from", dest="start", type=_time, metavar="TIME", help="taken out at or after (ISO 8601, UTC)")
    parser.add_argument("--to", dest="end", type=_time, metavar="TIME", help="… and at or before (default: now)")
    parser.add_argument("--cluster", action="append", default=[], help="only this cluster (name or ARN; repeat)")
    parser.add_argument("--service", action="append", default=[], help="only this ECS service (name; repeat)")
    parser.add_argument("--apply", action="store_true", help="register and delete the records (default: dry run)")


def _redrive_options(parser: argparse.ArgumentParser) -> None:
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


def _duration(text: str) -> float:
    try:
        return undo.parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _time(text: str) -> float:
    try:
        return undo.parse_time(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    commands = {"doctor": _doctor, "plan": _plan, "status": _status, "undo": _undo, "redrive": _redrive}
    try:
        return commands[args.command](args)
    except (*FAILURES, MutationRefused) as exc:
        print(f"cloudmap-reactor {args.command}: {exc}", file=sys.stderr)
        return 2


def _emit(args: argparse.Namespace, context: Context, document: Mapping[str, Any], text: Sequence[str]) -> None:
    """The report: JSON under its context, or the context's lines then ``text``; warnings again on stderr."""
    if args.json:
        print(json.dumps(with_context(context, document), indent=2))
    else:
        print("\n".join([*context.lines(), *text]))
    for warning in context.warnings:
        print(f"WARNING: {warning}", file=sys.stderr)


class ReadOnlyFleet(NamedTuple):
    reader: PassReader
    policy: Policy
    clusters: list[str]
    ledger: DynamoDbLedger | None  # None: no ledger table known, so the quarantine is not read
    context: Context


def _read_only_fleet(args: argparse.Namespace) -> ReadOnlyFleet:
    """The poller's reader and ledger over read-only clients, the policy to judge with, and the clusters."""
    context, clients = _start(args)
    policy = policy_of(args, context)
    tag = policy.cluster_tag_pair
    if args.cluster:
        clusters, source = list(args.cluster), "named with --cluster"
    elif policy.cluster_arns:
        clusters, source = list(policy.cluster_arns), "the stack's ClusterArns"
    else:
        clusters = _clusters_in_scope(clients.ecs, policy)
        source = f"those tagged {tag[0]}={tag[1]} (the stack's ClusterTag)" if tag else "every cluster of the region"
    names = ", ".join(c.rsplit("/", 1)[-1] for c in clusters)
    context.found.append(f"{len(clusters)} ECS cluster(s), {source}" + (f": {names}" if names else ""))
    if not clusters:
        context.warn(
            f"0 ECS clusters in account {context.account}, region {context.target.region}: nothing was checked "
            "(wrong account, region or profile?)"
        )
    policy = replace(policy, cluster_arns=tuple(clusters))
    ledger = DynamoDbLedger(clients.dynamodb, policy.ledger_table) if policy.ledger_table else None
    reader = review.reader_for(clients.ecs, clients.cloudmap, policy)
    return ReadOnlyFleet(reader, policy, clusters, ledger, context)


def _incomplete(context: Context, skipped: Sequence[Mapping[str, str]], failures: Sequence[Mapping[str, str]]) -> None:
    if skipped:
        context.warn(f"{len(skipped)} cluster(s) could not be read: the report leaves them out (see below)")
    if failures:
        context.warn(f"part of {len(failures)} service(s) could not be read: the report is incomplete (see below)")


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
    failures = [{"cluster": f.cluster_arn, "service": f.service_name, "error": f.error} for f in report.read_failures]
    _incomplete(fleet.context, skipped, failures)
    attention = diagnosis.needs_attention or bool(fleet.context.warnings) or report.ledger_error is not None
    services = [{**asdict(s), "needs_attention": s.needs_attention} for s in diagnosis.services]
    ledger = {
        "table": fleet.policy.ledger_table or None,
        "read": report.ledger_read,
        "records": report.ledger_records,
        "unreadable_items": report.ledger_unreadable,
        "error": report.ledger_error,
    }
    document = {
        "needs_attention": attention,
        "services": services,
        "clusters_not_scanned": skipped,
        "read_failures": failures,
        "ledger": ledger,
    }
    text = [
        _doctor_table(diagnosis.services),
        *_unread_lines(skipped, failures),
        _ledger_line(fleet.policy.ledger_table, report),
    ]
    _emit(args, fleet.context, document, text)
    return 1 if attention else 0


def _unread_lines(skipped: Sequence[Mapping[str, str]], failures: Sequence[Mapping[str, str]]) -> list[str]:
    """What could not be read: whole clusters, then parts of services."""
    return [f"could not read {s['cluster']} ({s['reason']}): {s['error']}" for s in skipped] + [
        f"could not read part of {f['cluster'].rsplit('/', 1)[-1]}/{f['service']}: {f['error']}" for f in failures
    ]


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
    _incomplete(fleet.context, plan["clusters_not_scanned"], plan["read_failures"])
    _emit(args, fleet.context, plan, [*_quarantine_lines(plan), *_plan_lines(plan)])
    return 1 if fleet.context.warnings else 0


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
    lines += _unread_lines(plan["clusters_not_scanned"], plan["read_failures"])
    if not any(value for key, value in plan.items() if key not in ("ledger", "quarantined")):
        lines.append("nothing to do")
    if plan["ledger"]["table"] is None:
        lines.append(NO_LEDGER)
    elif plan["ledger"]["unreadable_items"]:
        lines.append(f"skipped {plan['ledger']['unreadable_items']} unreadable item(s) of the quarantine ledger")
    return lines


def _status(args: argparse.Namespace) -> int:
    context, clients = _start(args)
    outputs = stack_outputs(context.stack)
    table = args.ledger_table or outputs.get(LEDGER_TABLE_OUTPUT, "")
    ledger = DynamoDbLedger(clients.dynamodb, table) if table else None
    if ledger is None:
        context.warn(f"no quarantine ledger (the stack has no {LEDGER_TABLE_OUTPUT} output): quarantine not shown")
    session = context.target.session
    found = status.gather(
        context.stack or {},
        cloudformation=clients.cloudformation,
        cloudwatch=read_only_client(session, "cloudwatch"),
        sqs=read_only_client(session, "sqs"),
        ledger=ledger,
        errors=(*FAILURES, MutationRefused),
    )
    context.found.append(
        f"ledger {table or '-'}, dead-letter queue {outputs.get(status.QUEUE_OUTPUT) or '-'}, "
        f"{len(found.alarms or {})} alarm(s)"
    )
    if found.switches.get(ENABLED_PARAMETER) == "false":
        context.warn("the functions are disabled (Enabled=false): nothing is taken out or put back")
    context.warnings += [f"could not read {problem}" for problem in found.problems]
    _emit(args, context, found.as_json(), found.lines())
    return 1 if found.needs_attention else 0


def _undo(args: argparse.Namespace) -> int:
    now = time.time()
    window = undo.Window(now - args.since, now) if args.since is not None else undo.Window(args.start, args.end or now)
    try:  # before any AWS call: a range no date can show must not end the command after it acted
        start, end = undo.iso(window.start), undo.iso(window.end)
    except (ValueError, OverflowError, OSError) as exc:
        raise CommandError(f"the time range cannot be shown as dates: {exc}") from None
    if window.start > window.end:
        raise CommandError(f"--from {start} is after --to {end}")
    context, clients = _start(args, UNDO_WRITES if args.apply else None)
    table = args.ledger_table or stack_outputs(context.stack).get(LEDGER_TABLE_OUTPUT, "")
    if not table:
        raise CommandError("no quarantine ledger: give --stack (its LedgerTableName output) or --ledger-table")
    _warn_unless_stopped(context)
    ledger = DynamoDbLedger(clients.dynamodb, table)
    ecs = EcsReader(clients.ecs)
    registrar = CloudMapDeregistrar(clients.cloudmap)
    actor = Actor(remover=registrar, registrar=registrar, ledger=ledger, tasks=ecs) if args.apply else None
    report = undo.undo(ledger, ecs, window, actor=actor, clusters=args.cluster, services=args.service)
    in_window = f"{len(report.entries)} taken out from {start} to {end}"
    context.found.append(f"{report.records} quarantine record(s) in {table}, {in_window}")
    if report.unreadable:
        context.warn(f"{report.unreadable} ledger item(s) are not quarantine records: never acted on")
    _emit(args, context, report.as_json(), [*(e.line() for e in report.entries), report.summary()])
    return 1 if report.count(undo.Outcome.FAILED) else 0


def _warn_unless_stopped(context: Context) -> None:
    """``undo`` is only lasting while the functions do nothing: say so unless the stack is switched off."""
    parameters = stack_parameters(context.stack)
    again = "the poller may take the instances out again while they are unhealthy"
    if context.stack is None:
        context.warn(f"no --stack: cannot tell whether the functions are stopped; if they run, {again}")
    elif ENABLED_PARAMETER not in parameters:
        if parameters.get("DryRun", "false").lower() != "true":
            context.warn(
                f"this stack has no {ENABLED_PARAMETER} switch and DryRun is off: {again}; set DryRun=true first"
            )
    elif parameters[ENABLED_PARAMETER].lower() != "false":
        context.warn(
            f"the stack's functions are not disabled ({ENABLED_PARAMETER}={parameters[ENABLED_PARAMETER]}): "
            f"{again}; set {ENABLED_PARAMETER}=false first"
        )


def _redrive(args: argparse.Namespace) -> int:
    """Not read-only: plain clients, so it can invoke the function and delete what it handled."""
    try:
        target = aws_target(args.profile, args.region)
        session = target.session
        queue_url, function_name = redrive.resolve_target(
            session.client("cloudformation"),
            stack_name=args.stack,
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
        context = open_context(session.client("sts"), target, args.stack, None)
        context.found.append(f"dead-letter queue {queue_url}, function {function_name}")
        if not args.json:
            print("\n".join(context.lines()))
            print(f"{'Dry run: ' if args.dry_run else ''}redriving {queue_url}\n  through {function_name}")
        report = (lambda line: print(line, file=sys.stderr)) if args.json else print
        summary = redrive.redrive(queue, deliver, max_messages=args.max_messages, dry_run=args.dry_run, report=report)
    except (redrive.SetupError, BotoCoreError, ClientError, CommandError) as exc:
        print(f"cloudmap-reactor redrive: {exc}", file=sys.stderr)
        return 2
    if args.json:
        document = {"dry_run": args.dry_run, **asdict(summary)}
        print(json.dumps(with_context(context, document), indent=2))
    else:
        print(summary.line(dry_run=args.dry_run))
    return 1 if summary.failed else 0


if __name__ == "__main__":
    sys.exit(main())
