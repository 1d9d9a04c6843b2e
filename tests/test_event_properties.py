"""Property-based tests: thousands of generated and mutated task events thrown at the validator and the reactor.

Why: ``test_invalid_events.py`` lists the malformations someone thought of. The function can be invoked
with anything (a replay from the dead-letter queue, a hand-made test event, a rule that was changed), so
these tests generate the rest (random JSON, the recorded sample with keys dropped or values replaced,
huge and non-ASCII strings, ARNs of other services, regions, accounts, clusters and partitions, other
sources and detail types) and check the promises that hold for every input:

* ``parse_task_state_change`` returns fields in the documented formats, consistent with each other,
  or raises ``InvalidEvent``, and nothing else;
* the handler lets no exception escape for an event it cannot act on, counts every rejection exactly
  once in ``InvalidEvents``, and removes from Cloud Map exactly the task that a valid stopping event
  names, from the Cloud Map services of the event's own ECS service, and nothing else.

The three problems these properties found (non-ASCII digits accepted in ARNs, an unknown cluster
raising instead of being dropped, ``repr`` refusing huge integers) are fixed and pinned by the
regression tests at the end of this module, each with its minimal event.
"""

from __future__ import annotations

import copy
import json
import re
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pytest
from botocore.exceptions import ClientError
from hypothesis import given, settings
from hypothesis import strategies as st

from cloudmap_reactor.events import (
    CLUSTER_ARN,
    DETAIL_TYPE,
    SERVICE_NAME,
    SOURCE,
    STATUS,
    TASK_ARN,
    InvalidEvent,
    TaskStateChange,
    parse_task_state_change,
)
from cloudmap_reactor.handlers import task_state_change
from devtools.aws_emulator import FleetBuilder, SeededService
from devtools.local_lambda import FakeLambdaContext
from tests.conftest import Output, load_event, task_event

Path = tuple[str | int, ...]
Registrations = frozenset[tuple[str, str]]  # (Cloud Map service id, instance id)

SAMPLE: dict[str, Any] = load_event("task-stopping.json")
SERVICE_PREFIX = "service:"
STOPPED = "STOPPED"

# The exported patterns read as ASCII-only (``\d`` is [0-9]): what an ARN, account or region really looks like.
ASCII_CLUSTER_ARN = re.compile(CLUSTER_ARN.pattern, re.ASCII)
ASCII_TASK_ARN = re.compile(TASK_ARN.pattern, re.ASCII)
ASCII_ACCOUNT = re.compile(r"[0-9]{12}")
ASCII_REGION = re.compile(r"[a-z]{2}(?:-[a-z]+)+-[0-9]{1,2}")

# -- Generators ---------------------------------------------------------------------------------------

# Every code point, lone surrogates included: json.loads turns "\ud800" into one.
ANY_CHAR = st.characters(exclude_categories=())
any_text = st.text(ANY_CHAR, max_size=40)
# The integers json.loads can produce: it refuses more than 4300 digits (a bigger one: see the regressions).
json_integers = st.integers() | st.sampled_from([2**63, -(2**63) - 1, 10**4299])
json_values: st.SearchStrategy[Any] = st.recursive(
    st.none() | st.booleans() | json_integers | st.floats() | any_text,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(ANY_CHAR, max_size=12), children, max_size=4)
    ),
    max_leaves=12,
)


def _repeat(unit: str, times: int) -> str:
    return unit * times


# Around every length limit of the validator (256, 300, 2048), and far beyond.
huge_text = st.builds(
    _repeat, st.sampled_from(["x", "é", "🚀", "\ud800", "0", "a/"]), st.sampled_from([256, 257, 301, 2049, 100_000])
)

# Look-alikes, spelled by code point: Arabic-Indic (U+0660...) and full-width (U+FF10...) digits and letters.
ARABIC_INDIC_ACCOUNT = "".join(chr(0x0660 + int(digit)) for digit in "123456789012")
FULL_WIDTH_ACCOUNT = "".join(chr(0xFF10 + int(digit)) for digit in "123456789012")
FULL_WIDTH_STOPPED = "".join(chr(ord(letter) + 0xFEE0) for letter in "STOPPED")

PARTITIONS = ("aws-cn", "aws-us-gov", "aws-iso-b", "AWS", "", "aws-", "aws_cn")
ARN_SERVICES = ("ECS", "lambda", "ec2", "servicediscovery", "", "ecs ")
REGIONS = (
    "eu-west-1",
    "us-gov-west-1",
    "ap-southeast-10",
    "US-EAST-1",
    "us-east",
    "us-east-123",
    "us-east-" + chr(0x0661),
    "",
)
# Arabic-Indic and full-width digits are decimal digits to Python's ``\d``: they must be refused.
ACCOUNTS = (
    "210987654321",
    "12345678901",
    "1234567890123",
    ARABIC_INDIC_ACCOUNT,
    FULL_WIDTH_ACCOUNT,
    "12345678901a",
    "",
)
CLUSTER_NAMES = ("staging", "Prod", "", "a" * 255, "a" * 256, "prod/extra", "pröd", "prod ", "prod\n", "..", "*")
CLUSTER_TYPES = ("clusters", "service", "task", "Cluster", "")
TASK_TYPES = ("tasks", "container", "task-definition", "cluster", "")
ODD_TASK_IDS = (
    "0F4B2C6E8A1D4E7F9B3C5D7E9F1A2B3C",
    "0f4b2c6e8a1d4e7f9b3c5d7e9f1a2b3",
    "0f4b2c6e8a1d4e7f9b3c5d7e9f1a2b3cd",
    "../0f4b2c6e8a1d4e7f9b3c5d7e9f1a2b3c",
    "0f4b2c6e8a1d4e7f9b3c5d7e9f1a2b3c/",
    "0f4b2c6e8a1d4e7f9b3c5d7e9f1a2b3c\n",
    chr(0x0660) + "f4b2c6e8a1d4e7f9b3c5d7e9f1a2b3c",
    "*",
    "",
)
STATUSES = (STOPPED, "RUNNING", "PENDING", "DEACTIVATING", "STOPPING", "DEPROVISIONING", "stopped", "Stopped")
ODD_STATUSES = ("STOPPED\n", " STOPPED", "", "A" * 32, "A" * 33, FULL_WIDTH_STOPPED, "STOPPED-1")
TIMES = (
    "2026-11-21T17:57:58Z",
    "2026-11-21T17:57:58.123+00:00",
    "2026-11-21",
    "yesterday",
    "2026-13-01T00:00:00Z",
    "9999-12-31T23:59:59Z",
    "2026-11-21T17:57:58Z\n",
    "",
)
SOURCES = (SOURCE, "aws.ec2", "AWS.ECS", "aws.ecs ", "aws.ecs\u200b", "custom.ecs", "aws.servicediscovery", "")
DETAIL_TYPES = (
    DETAIL_TYPE,
    "ECS Container Instance State Change",
    "ECS Service Action",
    "ECS Deployment State Change",
    "ecs task state change",
    DETAIL_TYPE + " ",
    "",
)
# The keys the validator reads: mutations aim here half of the time, anywhere in the event otherwise.
FOCUS: tuple[Path, ...] = (
    ("id",),
    ("source",),
    ("detail-type",),
    ("account",),
    ("region",),
    ("time",),
    ("resources",),
    ("detail",),
    ("detail", "clusterArn"),
    ("detail", "taskArn"),
    ("detail", "group"),
    ("detail", "desiredStatus"),
    ("detail", "lastStatus"),
    ("detail", "stoppedReason"),
    ("detail", "stopCode"),
)
SWAPS: tuple[tuple[Path, Path], ...] = (
    (("source",), ("detail-type",)),
    (("detail", "clusterArn"), ("detail", "taskArn")),
    (("detail", "desiredStatus"), ("detail", "lastStatus")),
    (("account",), ("region",)),
    (("id",), ("detail", "taskArn")),
)
WRAPS: tuple[Callable[[Any], Any], ...] = (
    lambda event: [event],
    json.dumps,
    lambda event: event.get("detail") if isinstance(event, dict) else event,
    lambda event: {"detail": event},
    lambda event: None,
)


@dataclass(frozen=True)
class Target:
    """What generated events aim at: a cluster, task ids in it, and its services' names."""

    partition: str
    region: str
    account: str
    cluster_name: str
    task_ids: tuple[str, ...]
    service_names: tuple[str, ...]


SAMPLE_TARGET = Target(
    partition="aws",
    region=SAMPLE["region"],
    account=SAMPLE["account"],
    cluster_name="prod",
    task_ids=(SAMPLE["detail"]["taskArn"].rsplit("/", 1)[-1],),
    service_names=("orders",),
)


def _mostly(right: str, wrong: Sequence[str]) -> st.SearchStrategy[str]:
    """``right`` four times in five, else one of ``wrong``; shrinks towards ``right``."""
    return st.integers(0, 4).flatmap(lambda n: st.just(right) if n < 4 else st.sampled_from(wrong))


def _task_ids(target: Target) -> st.SearchStrategy[str]:
    return st.one_of(
        st.sampled_from(target.task_ids),
        st.from_regex(r"[0-9a-f]{32}", fullmatch=True),
        st.uuids().map(str),
        st.sampled_from(ODD_TASK_IDS),
    )


@st.composite
def arn_pairs(draw: st.DrawFn, target: Target) -> tuple[str, str]:
    """A (clusterArn, taskArn) pair built part by part, each part mostly the target's and sometimes wrong."""

    def prefix() -> str:
        partition = draw(_mostly(target.partition, PARTITIONS))
        service = draw(_mostly("ecs", ARN_SERVICES))
        region, account = draw(_mostly(target.region, REGIONS)), draw(_mostly(target.account, ACCOUNTS))
        return f"arn:{partition}:{service}:{region}:{account}"

    cluster_prefix = prefix()
    cluster_name = draw(_mostly(target.cluster_name, CLUSTER_NAMES))
    cluster_arn = f"{cluster_prefix}:{draw(_mostly('cluster', CLUSTER_TYPES))}/{cluster_name}"
    task_prefix = cluster_prefix if draw(st.integers(0, 3)) < 3 else prefix()
    task_cluster = draw(st.sampled_from([cluster_name, None]) | _mostly(target.cluster_name, CLUSTER_NAMES))
    task_path = draw(_task_ids(target)) if task_cluster is None else f"{task_cluster}/{draw(_task_ids(target))}"
    return cluster_arn, f"{task_prefix}:{draw(_mostly('task', TASK_TYPES))}/{task_path}"


def _field_values(target: Target) -> dict[Path, st.SearchStrategy[Any]]:
    """Plausible wrong values (and the right ones) for each field the validator reads."""
    groups = [SERVICE_PREFIX + name for name in target.service_names] + [
        "service:",
        "family:orders-td",
        "service:unknown",
        "SERVICE:orders",
        "service:orders/../payments",
        "service:ördérs",
        "service:orders\n",
        " service:orders",
        "service:" + "x" * 255,
        "service:" + "x" * 256,
        "",
    ]
    statuses = st.sampled_from(STATUSES + ODD_STATUSES)
    optional_text = st.none() | st.just("") | any_text | huge_text
    return {
        ("id",): st.uuids().map(str) | any_text | huge_text | json_values,
        ("source",): st.sampled_from(SOURCES),
        ("detail-type",): st.sampled_from(DETAIL_TYPES),
        ("account",): st.sampled_from((target.account, *ACCOUNTS)),
        ("region",): st.sampled_from((target.region, *REGIONS)),
        ("time",): st.sampled_from(TIMES) | any_text,
        ("resources",): json_values,
        ("detail",): st.just({}) | json_values,
        ("detail", "group"): st.sampled_from(groups),
        ("detail", "desiredStatus"): statuses,
        ("detail", "lastStatus"): statuses,
        ("detail", "stoppedReason"): optional_text,
        ("detail", "stopCode"): optional_text,
    }


def _paths(value: Any, prefix: Path = ()) -> Iterator[Path]:
    """Every key and index path in a JSON value, parents before children."""
    items: Any = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, child in items:
        yield (*prefix, key)
        yield from _paths(child, (*prefix, key))


def _parent(event: Any, path: Path) -> Any:
    node = event
    for key in path[:-1]:
        found, node = _child(node, key)
        if not found:
            return None
    return node


def _child(node: Any, key: str | int) -> tuple[bool, Any]:
    if isinstance(node, dict) and key in node:
        return True, node[key]
    if isinstance(node, list) and isinstance(key, int) and key < len(node):
        return True, node[key]
    return False, None


def _get(event: Any, path: Path) -> tuple[bool, Any]:
    return _child(_parent(event, path), path[-1])


def _put(event: Any, path: Path, value: Any) -> None:
    """Set the value at ``path``; a no-op when an earlier mutation removed or replaced a parent."""
    parent, key = _parent(event, path), path[-1]
    if isinstance(parent, dict) or _child(parent, key)[0]:
        parent[key] = value


def _drop(event: Any, path: Path) -> None:
    found, _ = _get(event, path)
    if found:
        parent = _parent(event, path)
        del parent[path[-1]]


@st.composite
def mutated_events(draw: st.DrawFn, base: st.SearchStrategy[dict[str, Any]], target: Target) -> Any:
    """``base`` with up to three mutations, and now and then wrapped into something that is not an event."""
    event: Any = copy.deepcopy(draw(base))
    fields = _field_values(target)
    for _ in range(draw(st.integers(0, 3))):
        operation = draw(st.sampled_from(("drop", "json", "huge", "unicode", "field", "arns", "swap")))
        if operation == "arns":
            cluster_arn, task_arn = draw(arn_pairs(target))
            _put(event, ("detail", "clusterArn"), cluster_arn)
            _put(event, ("detail", "taskArn"), task_arn)
        elif operation == "field":
            path = draw(st.sampled_from(list(fields)))
            _put(event, path, draw(fields[path]))
        elif operation == "swap":
            first, second = draw(st.sampled_from(SWAPS))
            (has_first, first_value), (has_second, second_value) = _get(event, first), _get(event, second)
            if has_first and has_second:
                _put(event, first, second_value)
                _put(event, second, first_value)
        else:
            path = draw(st.sampled_from(FOCUS) | st.sampled_from(list(_paths(event)) or FOCUS))
            if operation == "drop":
                _drop(event, path)
            else:
                _put(event, path, draw({"json": json_values, "huge": huge_text, "unicode": any_text}[operation]))
    if draw(st.integers(0, 15)) == 15:
        event = draw(st.sampled_from(WRAPS))(event)
    return event


# -- 1. The validator alone ---------------------------------------------------------------------------


def _assert_real_format(pattern: re.Pattern[str], value: str) -> None:
    """``value`` matches ``pattern`` and is plain ASCII (``\\d`` would also take other scripts' digits)."""
    assert pattern.fullmatch(value), f"{value!r} does not match {pattern.pattern}"
    assert value.isascii(), f"{value!r} is not ASCII"


def _assert_documented(raw: Any, change: TaskStateChange) -> None:
    """Everything a returned ``TaskStateChange`` promises, checked against the raw event it came from."""
    assert isinstance(raw, dict)
    assert raw["source"] == SOURCE
    assert raw["detail-type"] == DETAIL_TYPE
    detail = raw["detail"]
    assert isinstance(detail, dict)
    # The fields are the event's own values, not normalised copies.
    assert change.event_id == raw["id"]
    assert (change.cluster_arn, change.task_arn, change.group) == (
        detail["clusterArn"],
        detail["taskArn"],
        detail["group"],
    )
    assert (change.desired_status, change.last_status) == (detail["desiredStatus"], detail["lastStatus"])
    assert (change.stopped_reason, change.stop_code) == (detail.get("stoppedReason"), detail.get("stopCode"))
    # Formats and lengths.
    assert isinstance(change.event_id, str)
    assert 0 < len(change.event_id) <= 256
    assert CLUSTER_ARN.fullmatch(change.cluster_arn)
    assert TASK_ARN.fullmatch(change.task_arn)
    assert STATUS.fullmatch(change.desired_status)
    assert STATUS.fullmatch(change.last_status)
    assert isinstance(change.group, str)
    assert 0 < len(change.group) <= 300
    if change.group.startswith(SERVICE_PREFIX):
        assert change.service_name is not None
        assert SERVICE_NAME.fullmatch(change.service_name)
    else:
        assert change.service_name is None
    assert change.stopped_reason is None or (
        isinstance(change.stopped_reason, str) and len(change.stopped_reason) <= 2048
    )
    assert change.stop_code is None or (isinstance(change.stop_code, str) and len(change.stop_code) <= 64)
    assert isinstance(raw["time"], str)
    datetime.fromisoformat(raw["time"])
    # Consistency: the task is in the cluster the event names, in its partition, region and account.
    cluster_prefix, cluster_name = change.cluster_arn.split(":cluster/", 1)
    task_prefix, task_path = change.task_arn.split(":task/", 1)
    assert task_prefix == cluster_prefix
    assert "/" not in task_path or task_path.split("/", 1)[0] == cluster_name
    # What AWS really writes: ASCII digits in accounts and regions.
    _assert_real_format(ASCII_CLUSTER_ARN, change.cluster_arn)
    _assert_real_format(ASCII_TASK_ARN, change.task_arn)
    _assert_real_format(ASCII_ACCOUNT, raw["account"])
    _assert_real_format(ASCII_REGION, raw["region"])


def test_validator_returns_documented_fields_or_raises_invalid_event() -> None:
    """3000 inputs: arbitrary JSON, and the recorded sample mutated; ``InvalidEvent`` is the only way out.

    A generator that never produced an accepted event would check nothing about accepted fields, so
    the run must see both outcomes often.
    """
    outcomes: Counter[str] = Counter()

    @settings(max_examples=3000, deadline=None, derandomize=True)
    @given(raw=json_values | mutated_events(st.just(SAMPLE), SAMPLE_TARGET))
    def check(raw: Any) -> None:
        try:
            change = parse_task_state_change(raw)
        except InvalidEvent as exc:
            message = str(exc)
        else:
            _assert_documented(raw, change)
            outcomes["accepted"] += 1
            return
        # The message goes into a log line: it names the problem and never carries a huge input.
        assert 0 < len(message) <= 1000
        outcomes["rejected"] += 1

    check()
    assert outcomes["accepted"] >= 100, outcomes
    assert outcomes["rejected"] >= 1000, outcomes


# -- 2. The handler against the emulator ----------------------------------------------------------------


# Pinned ids, so that both task id formats are in the fleet (moto picks UUIDs for the others).
ORDERS_TASK_IDS = ("5d2f9a1c3b7e4f6a8c0d1e2f3a4b5c6d", "9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b")
LAST_STATUSES = ("RUNNING", "DEACTIVATING", "STOPPING", "DEPROVISIONING", "STOPPED", "PENDING")


@dataclass(frozen=True)
class Fleet:
    """The seeded fleet and what the tests need to know about it."""

    aws: FleetBuilder
    cluster_arn: str
    services: tuple[SeededService, ...]

    @property
    def target(self) -> Target:
        prefix, cluster_name = self.cluster_arn.split(":cluster/", 1)
        _, partition, _, region, account = prefix.split(":")
        return Target(
            partition=partition,
            region=region,
            account=account,
            cluster_name=cluster_name,
            task_ids=tuple(arn.rsplit("/", 1)[-1] for service in self.services for arn in service.task_arns),
            service_names=tuple(service.name for service in self.services),
        )

    def service(self, name: str) -> SeededService | None:
        return next((service for service in self.services if service.name == name), None)

    def registrations(self) -> Registrations:
        return frozenset(
            (service_id, instance_id)
            for service in self.services
            for service_id in service.cloudmap_service_ids
            for instance_id in self.aws.instance_ids(service_id)
        )

    def restore(self, gone: Registrations) -> None:
        """Register again what an example removed, as Service Connect registered it, for the next example."""
        for service_id, instance_id in gone:
            owner = next(s for s in self.services if service_id in s.cloudmap_service_ids)
            task_arn = next(arn for arn in owner.task_arns if arn.rsplit("/", 1)[-1] == instance_id)
            self.aws.register_task_instance(service_id, owner, task_arn)


@pytest.fixture
def fleet(aws: FleetBuilder) -> Fleet:
    """Cluster ``prod``: ``orders`` (2 discovery names, 4 tasks), ``payments`` (1, 2 tasks), ``worker`` (none, 1)."""
    cluster_arn = aws.create_cluster("prod")
    orders = aws.create_service("prod", "orders", discovery_names=["orders", "orders-grpc"])
    aws.start_tasks(orders, 4, task_ids=ORDERS_TASK_IDS)
    payments = aws.create_service("prod", "payments", discovery_names=["payments"])
    aws.start_tasks(payments, 2)
    worker = aws.create_service("prod", "worker")
    aws.start_tasks(worker, 1)
    return Fleet(aws=aws, cluster_arn=cluster_arn, services=(orders, payments, worker))


@st.composite
def fleet_events(draw: st.DrawFn, fleet: Fleet) -> dict[str, Any]:
    """A well-formed event about a fleet task: mostly a stopping task of its own service, in either ARN format."""
    service = draw(st.sampled_from(fleet.services))
    every_task = [arn for s in fleet.services for arn in s.task_arns]
    task_arn = draw(st.sampled_from(service.task_arns) if draw(st.integers(0, 3)) < 3 else st.sampled_from(every_task))
    if draw(st.booleans()):  # the short format, without the cluster name
        task_arn = f"{task_arn.split(':task/', 1)[0]}:task/{task_arn.rsplit('/', 1)[-1]}"
    group = draw(_mostly(SERVICE_PREFIX + service.name, ("family:orders-td", "service:unknown")))
    return task_event(
        task_arn,
        fleet.cluster_arn,
        group=group,
        desired_status=draw(_mostly(STOPPED, ("RUNNING", "PENDING"))),
        last_status=draw(st.sampled_from(LAST_STATUSES)),
    )


def _allowed_removals(raw: Any, fleet: Fleet) -> Registrations:
    """What a correct reactor removes for ``raw``, decided from the event alone, without the code under test.

    Only for a stopping task (desiredStatus STOPPED) of a service of the fleet (group ``service:<name>``),
    named by a task ARN of the fleet's cluster; only that task id, and only from that service's Cloud Map
    services. (Whether the rest of the event is valid is the handler's to say; this is an upper bound.)
    """
    if not isinstance(raw, dict) or raw.get("source") != SOURCE or raw.get("detail-type") != DETAIL_TYPE:
        return frozenset()
    detail = raw.get("detail")
    if not isinstance(detail, dict) or detail.get("desiredStatus") != STOPPED:
        return frozenset()
    group, task_arn = detail.get("group"), detail.get("taskArn")
    if detail.get("clusterArn") != fleet.cluster_arn or not isinstance(group, str) or not isinstance(task_arn, str):
        return frozenset()
    cluster_prefix, cluster_name = fleet.cluster_arn.split(":cluster/", 1)
    if not ASCII_TASK_ARN.fullmatch(task_arn) or not task_arn.startswith(f"{cluster_prefix}:task/"):
        return frozenset()
    task_path = task_arn.split(":task/", 1)[1]
    service = fleet.service(group.removeprefix(SERVICE_PREFIX)) if group.startswith(SERVICE_PREFIX) else None
    if service is None or ("/" in task_path and task_path.split("/", 1)[0] != cluster_name):
        return frozenset()
    task_id = task_path.rsplit("/", 1)[-1]
    return frozenset((service_id, task_id) for service_id in service.cloudmap_service_ids)


def _error_code(error: BaseException) -> str | None:
    cause = error.__cause__
    return str(cause.response.get("Error", {}).get("Code")) if isinstance(cause, ClientError) else None


def _judge(
    raw: Any,
    result: dict[str, Any] | Exception,
    before: Registrations,
    after: Registrations,
    output: Output,
    fleet: Fleet,
) -> str:
    """Check one invocation against the promises in the module docstring; return its kind, for the run's tally."""
    assert after <= before, f"registered by the reactor: {sorted(after - before)}"
    gone = before - after
    invalid_events = output.metrics.value("InvalidEvents")
    dropped = [record for record in output.logs if record["message"] == "Dropping invalid event"]
    if isinstance(result, Exception):
        raise result
    status = result.get("status")
    if status == "invalid":
        assert result == {"status": "invalid"}
        assert invalid_events == 1, f"InvalidEvents counted {invalid_events} times"
        assert not gone, f"an invalid event removed {sorted(gone)}"
        assert len(dropped) == 1
        assert 0 < len(str(dropped[0]["validation_error"])) <= 1000
        return "invalid"
    assert invalid_events == 0, f"a {status} event counted in InvalidEvents"
    assert not dropped
    change = parse_task_state_change(raw)
    if status == "ignored":
        assert result == {"status": "ignored"}
        assert not gone, f"an ignored event removed {sorted(gone)}"
        assert change.desired_status != STOPPED or change.service_name is None
        return "ignored"
    assert status == "processed", result
    expected = _allowed_removals(raw, fleet) & before
    assert gone == expected, f"removed {sorted(gone)}, expected {sorted(expected)}"
    service = fleet.service(change.service_name or "")
    outcomes: dict[str, str] = result["outcomes"]
    # The service is found only in the fleet's own cluster (an ARN of another partition, region or
    # account names another cluster, even when its name is "prod").
    found = service is not None and change.cluster_arn == fleet.cluster_arn
    assert set(outcomes) == set(service.cloudmap_service_ids if service and found else ())
    assert {service_id for service_id, outcome in outcomes.items() if outcome == "deregistered"} == {
        service_id for service_id, _ in gone
    }
    assert output.metrics.value("TasksDeregistered") == len(gone)
    return "processed: removed the task" if gone else "processed: nothing registered to remove"


def _invoke(raw: Any, context: FakeLambdaContext) -> dict[str, Any] | Exception:
    try:
        result: dict[str, Any] = task_state_change.lambda_handler(raw, context)
    except Exception as exc:  # judged (and re-raised unless known) by _judge, after the fleet is restored
        return exc
    return result


def test_reactor_removes_only_what_a_valid_stopping_event_names(
    fleet: Fleet,
    lambda_context: FakeLambdaContext,
    read_output: Callable[[], Output],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """300 events about the fleet's tasks, most of them mutated, against one seeded fleet.

    The examples run inside the test, so the fleet is seeded once (no function-scoped fixture is
    shared behind Hypothesis's back), every example starts from the same registrations (what one
    removed is registered again before any assertion can fail), and the run can be checked as a
    whole: a generator that never led to a real deregistration would prove little.
    """
    before = fleet.registrations()
    kinds: Counter[str] = Counter()

    @settings(max_examples=300, deadline=None, derandomize=True)
    @given(raw=mutated_events(fleet_events(fleet), fleet.target))
    def check(raw: Any) -> None:
        result = _invoke(raw, lambda_context)
        after = fleet.registrations()
        output = read_output()
        caplog.clear()
        fleet.restore(before - after)
        kind = _judge(raw, result, before, after, output, fleet)
        kinds[kind] += 1

    check()
    assert fleet.registrations() == before
    assert kinds["processed: removed the task"] >= 20, kinds
    assert kinds["processed: nothing registered to remove"] >= 5, kinds
    assert kinds["invalid"] >= 50, kinds
    assert kinds["ignored"] >= 5, kinds


def test_reactor_drops_and_counts_what_is_not_an_event(
    fleet: Fleet,
    lambda_context: FakeLambdaContext,
    read_output: Callable[[], Output],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """200 arbitrary JSON values: each one is invalid, counted once in InvalidEvents, and removes nothing."""
    before = fleet.registrations()

    @settings(max_examples=200, deadline=None, derandomize=True)
    @given(raw=json_values)
    def check(raw: Any) -> None:
        result = _invoke(raw, lambda_context)
        after = fleet.registrations()
        output = read_output()
        caplog.clear()
        fleet.restore(before - after)
        assert _judge(raw, result, before, after, output, fleet) == "invalid"

    check()


# -- Regressions: the three problems these properties found, each pinned by its minimal event. --


def test_regression_arn_with_non_ascii_digits_is_invalid() -> None:
    """No AWS account is written in Arabic-Indic digits; yet the event validates and its ARN is sent to ECS."""
    event = copy.deepcopy(SAMPLE)
    event["detail"]["clusterArn"] = f"arn:aws:ecs:us-east-1:{ARABIC_INDIC_ACCOUNT}:cluster/prod"
    event["detail"]["taskArn"] = (
        f"arn:aws:ecs:us-east-1:{ARABIC_INDIC_ACCOUNT}:task/prod/0f4b2c6e8a1d4e7f9b3c5d7e9f1a2b3c"
    )
    with pytest.raises(InvalidEvent):
        parse_task_state_change(event)


def test_regression_stopping_task_of_an_unknown_cluster_is_not_retried(
    aws: FleetBuilder, lambda_context: FakeLambdaContext
) -> None:
    """Retrying cannot make the cluster exist; an unknown *service* is already answered 'processed', not raised."""
    aws.create_cluster("prod")
    event = task_event(
        "arn:aws:ecs:us-east-1:123456789012:task/staging/0f4b2c6e8a1d4e7f9b3c5d7e9f1a2b3c",
        "arn:aws:ecs:us-east-1:123456789012:cluster/staging",
        group="service:orders",
    )
    assert task_state_change.lambda_handler(event, lambda_context)["status"] in {"ignored", "processed"}


def test_regression_integer_of_more_than_4300_digits_is_invalid() -> None:
    """Not reachable through json.loads on Python 3.11 (it refuses such a number itself), but the contract breaks."""
    event = copy.deepcopy(SAMPLE)
    event["id"] = 10**4300
    with pytest.raises(InvalidEvent):
        parse_task_state_change(event)


def test_regression_same_names_in_another_partition_find_no_service(
    fleet: Fleet, lambda_context: FakeLambdaContext
) -> None:
    """The property run's expectation was wrong here, not the reactor: aws-cn's cluster/prod is not ours."""
    task_arn = fleet.services[0].task_arns[0].replace("arn:aws:", "arn:aws-cn:")
    event = task_event(task_arn, fleet.cluster_arn.replace("arn:aws:", "arn:aws-cn:"), group="service:orders")
    before = fleet.registrations()

    result = task_state_change.lambda_handler(event, lambda_context)

    assert result in ({"status": "processed", "outcomes": {}}, {"status": "ignored"})
    assert fleet.registrations() == before
