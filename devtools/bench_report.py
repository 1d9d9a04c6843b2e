"""The `make bench` report: tables in docs/benchmarks.md and a plot in docs/benchmarks.png."""

from __future__ import annotations

import argparse
import os
import platform
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

TASKS_PER_SERVICE = 20
UNHEALTHY_PER_CLUSTER = 3
POLL_INTERVAL = 10.0
DEFAULT_BUDGET = "10"
RESTORE_SCHEDULE_SECONDS = 60.0  # the template's PollSchedule, rate(1 minute)
PAGE = 100  # DescribeTasks takes 100 tasks; ListTasks and ListInstances answer 100 a page


@dataclass(frozen=True)
class FleetSpec:
    """One bench cluster: ``tasks`` tasks, 20 a service; ``cloudmap_share`` of the services registered in Cloud Map."""

    tasks: int
    cloudmap_share: float = 1.0

    @property
    def services(self) -> int:
        return self.tasks // TASKS_PER_SERVICE

    @property
    def cloudmap_every(self) -> int:
        """Every n-th service (from the first) is a Service Connect service registered in Cloud Map."""
        return max(1, round(1 / self.cloudmap_share))

    @property
    def mixed(self) -> bool:
        return self.cloudmap_every > 1

    @property
    def cluster_name(self) -> str:
        return f"bench-{self.tasks // 1000}k" + ("-mixed" if self.mixed else "")

    @property
    def label(self) -> str:
        return f"{self.tasks:,}" + (f" ({100 / self.cloudmap_every:g}% in Cloud Map)" if self.mixed else "")

    def shape(self) -> ClusterShape:
        """What the floor needs to know of this cluster as seeded (every Cloud Map service in scope)."""
        relevant = tuple(TASKS_PER_SERVICE for index in range(self.services) if index % self.cloudmap_every == 0)
        return ClusterShape(tasks=self.tasks, relevant=relevant, instances=relevant)

    @classmethod
    def parse(cls, text: str) -> FleetSpec:
        """``1000`` (every service in Cloud Map) or ``50000:0.1`` (10% of them)."""
        tasks, _, share = text.partition(":")
        return cls(int(tasks), float(share) if share else 1.0)


@dataclass(frozen=True)
class ClusterShape:
    """One cluster, as the floor of a steady pass sees it."""

    tasks: int  # every running task of the cluster
    relevant: tuple[int, ...]  # tasks of each in-scope ECS service registered in Cloud Map (T_rel, per service)
    instances: tuple[int, ...]  # instances of each Cloud Map service those services register in


@dataclass(frozen=True)
class Floor:
    """The fewest read calls a steady pass can make: ``describe`` DescribeTasks plus the cheapest listing."""

    t_rel: int
    describe: int
    listing: int
    listing_by: str

    @property
    def calls(self) -> int:
        return self.describe + self.listing


LISTINGS = ("ListTasks (cluster)", "ListTasks (per service)", "ListInstances")


def pass_floor(clusters: Sequence[ClusterShape]) -> Floor:
    """The issue's floor: per cluster ⌈T_rel/100⌉ ``DescribeTasks`` (a batch names one cluster) plus the cheapest
    way to learn which of those tasks exist: ECS ``ListTasks`` pages over the cluster, ``ListTasks`` pages per
    relevant service, or Cloud Map ``ListInstances`` pages per Cloud Map service, whichever needs fewest calls.
    A cluster with no relevant task needs no call at all.
    """
    describe = listing = 0
    chosen: set[str] = set()
    for cluster in clusters:
        t_rel = sum(cluster.relevant)
        if not t_rel:
            continue
        describe += _pages(t_rel)
        options = (
            _pages(cluster.tasks),
            sum(_pages(n) for n in cluster.relevant),
            sum(_pages(n) for n in cluster.instances),
        )
        cheapest = min(options)
        listing += cheapest
        chosen.add(" or ".join(sorted(name for name, n in zip(LISTINGS, options, strict=True) if n == cheapest)))
    t_rel = sum(sum(c.relevant) for c in clusters)
    return Floor(t_rel=t_rel, describe=describe, listing=listing, listing_by=" + ".join(sorted(chosen)) or "none")


def _pages(items: int) -> int:
    return max(1, -(-items // PAGE))


@dataclass
class FlipLatency:  # in this module so that a pickled one loads when the bench ran as __main__
    """Seconds from "sick" to "out of Cloud Map" and from "healthy again" to "registered again", per kind of health."""

    spec: FleetSpec
    victims: int  # cycling at once
    detected: dict[str, list[float]]  # "ECS health" | "HTTP probes" -> seconds
    restored: dict[str, list[float]]
    attributes_changed: int  # returns whose Cloud Map attributes differed from the original ones
    timeouts: int  # waits that did not complete within the limit
    warmup_seconds: float
    limit_seconds: float
    budget: str = DEFAULT_BUDGET  # ECS_READS_PER_SECOND of the worker ("0": unlimited)


def _slowest_steady(passes: list[dict[str, Any]]) -> dict[str, Any]:
    """The slowest complete pass after the first (a cold container's warm-up over), else the last pass."""
    steady = [p for p in passes[1:] if p.get("complete", True)]
    return max(steady, key=lambda p: p["seconds"]) if steady else passes[-1]


def render(
    args: argparse.Namespace,
    scans: dict[FleetSpec, dict[str, Any]],
    reactor: dict[str, Any],
    imports: dict[str, dict[str, float]],
    *,
    flips: list[FlipLatency],
    cpu: dict[str, Any] | None = None,
    timing: dict[str, float] | None = None,
    note: str = "",
) -> str:
    lines = [
        "# Benchmarks",
        "",
        f"Generated by `make bench` on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC "
        f"({platform.machine()}, {platform.python_implementation()} {platform.python_version()}, "
        f"{_cores()} cores; the functions run on arm64 Lambda). Injected latency: {args.latency_ms:g} ms per AWS "
        f"call. {TASKS_PER_SERVICE} tasks per ECS service, one cluster per fleet; in a mixed fleet only every "
        "n-th service is a Service Connect service registered in Cloud Map (the others run tasks too). "
        "See `devtools/bench.py` for the method.",
        *(["", note] if note else []),
        *(_timing(timing) if timing else []),
        "",
        "## Health pass: calls and time",
        "",
        "T_rel: the tasks that matter, those of in-scope ECS services registered in Cloud Map. Floor (issue "
        "#15): ⌈T_rel/100⌉ `DescribeTasks` per cluster plus the cheapest listing of those tasks (ECS `ListTasks` "
        "pages over the cluster or per service, or Cloud Map `ListInstances` pages per Cloud Map service, "
        "whichever needs fewest calls; `devtools.bench_report.pass_floor`). Ratio: the steady pass's read calls "
        "(ECS and Cloud Map: the listing may be either) over the floor; also without `DescribeTaskDefinition`, "
        "which a container pays once per task definition (at most 20 a pass) and which the steady passes here, "
        "right after a cold start with one task definition per service, still pay. First pass also lists and describes "
        "the services (kept for the rest of the invocation). Budget: unlimited (`ECS_READS_PER_SECOND=0`) and "
        f"the default ({DEFAULT_BUDGET}/s, ECS reads only); fits: the steady pass at the default budget takes "
        f"less than `PollIntervalSeconds` ({POLL_INTERVAL:g} s). Worker CPU: the measured process's CPU time "
        "over the steady passes (every thread: calls, parsing, decisions) per 100 tasks read, on this machine "
        "while the emulator shares its cores; once with botocore's full ECS model (as before "
        "`adapters/trimmed_model.py`), once with the trimmed one, both at unlimited budget.",
        "",
        "| fleet (tasks) | services (in Cloud Map) | T_rel | floor: DescribeTasks + listing | first pass ECS reads "
        "| steady ECS reads (DescribeTaskDefinition) | steady Cloud Map calls | steady / floor "
        "| steady / floor without DescribeTaskDefinition | first pass s | steady pass s "
        f"| steady pass s at {DEFAULT_BUDGET} reads/s | fits in {POLL_INTERVAL:g} s "
        "| worker CPU ms per 100 tasks read: full model → trimmed "
        "| peak RSS MB |",
        "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    incomplete = False
    for spec, scan in scans.items():
        first, *steady = scan["unlimited"]["passes"]
        budget_steady = _slowest_steady(scan["budget"]["passes"]) if scan.get("budget") else None
        floor = pass_floor([spec.shape()])
        ecs = statistics.mean(p["ecs_calls"] for p in steady)
        cloudmap = statistics.mean(p["cloudmap_calls"] for p in steady)
        definitions = statistics.mean(p["calls"].get("ecs:DescribeTaskDefinition", 0) for p in steady)
        cut = "" if all(p.get("complete", True) for p in steady) else " *"
        at_least = "≥ " if cut else ""
        budget_s = f"{budget_steady['seconds']:.2f}{_cut(budget_steady)}" if budget_steady else "n/a"
        fits = "n/a" if budget_steady is None else _fits(budget_steady)
        incomplete = incomplete or bool(cut) or any(not p.get("complete", True) for p in scan["budget"]["passes"])
        lines.append(
            f"| {spec.label} | {spec.services:,} ({len(spec.shape().relevant):,}) | {floor.t_rel:,} "
            f"| {floor.calls:,} = {floor.describe:,} + {floor.listing:,} {floor.listing_by} "
            f"| {first['ecs_calls']:,}{_cut(first)} | {ecs:,.4g} ({definitions:,.4g}){cut} | {cloudmap:,.4g}{cut} "
            f"| {at_least}{(ecs + cloudmap) / floor.calls:.2f}{cut} "
            f"| {at_least}{(ecs + cloudmap - definitions) / floor.calls:.2f}{cut} "
            f"| {first['seconds']:.2f}{_cut(first)} "
            f"| {statistics.mean(p['seconds'] for p in steady):.2f}{cut} | {budget_s} | {fits} "
            f"| {_cpu_per_100(scan.get('full model'))} → {_cpu_per_100(scan['unlimited'])} "
            f"| {scan['unlimited']['peak_rss_mb']:.0f} |"
        )
    if incomplete:
        lines += [
            "",
            "\\* Incomplete: the pass did not look after the whole cluster: a cold container still warming it up "
            "(its services described over its first passes, each spending at most half its read time on them; "
            "the services known are looked after) or a pass that ran out of time. A pass's reads stop about "
            "23 s after it starts: its deadline is the lease it holds (3 intervals, at least 30 s) less a 2 s "
            "margin, and reading leaves time for acting. The steady pass at the default budget is the slowest "
            "complete pass after the first of 7, refresh slices included (the warm-up over). CPU per 100 "
            "tasks is not given for incomplete passes.",
        ]
    lines += [
        "",
        "Steady calls by operation: "
        + "; ".join(f"{spec.label}: {_calls(scan['unlimited']['passes'][-1]['calls'])}" for spec, scan in scans.items())
        + ".",
    ]
    if cpu:
        lines += _cpu(cpu)
    lines += _ledger_cost(scans)
    events = reactor["events"]
    warm = events[1:]
    warm_calls = sorted({sum(e["calls"].values()) for e in warm})
    lines += [
        "",
        "First-pass Cloud Map calls: reconciliation (one `ListInstances` per Cloud Map service, on the first "
        "pass of each invocation and every `RECONCILE_EVERY_PASSES`) and the deregistrations of the "
        f"{UNHEALTHY_PER_CLUSTER} tasks seeded UNHEALTHY per cluster; later passes make none for them "
        "(already removed in this invocation).",
        "",
        "## Reactor",
        "",
        "| event | AWS calls | calls | seconds |",
        "|---|---:|---|---:|",
        f"| first (cold cache) | {sum(events[0]['calls'].values())} | {_calls(events[0]['calls'])} "
        f"| {events[0]['seconds']:.3f} |",
        f"| warm (median of {len(warm)}) | {'/'.join(str(c) for c in warm_calls)} | {_calls(warm[0]['calls'])} "
        f"| {statistics.median(e['seconds'] for e in warm):.3f} |",
        "",
        f"The service has {reactor['discovery_names']} discovery name(s): a warm stop event costs one "
        "`DeregisterInstance` per discovery name and nothing else.",
        "",
    ]
    for flip in flips:
        lines += _flip_latency(flip)
    boto = imports["boto3"]["min"]
    lines += [
        "",
        "## Cold import (runtime dependencies only, 9 fresh interpreters each)",
        "",
        "Measured with `LAMBDA_TASK_ROOT` set, as in Lambda (the X-Ray SDK behaves differently outside it). "
        "The ratio uses the fastest run of each (the least disturbed by the rest of the machine).",
        "",
        "| module | min ms | median ms | ratio to `import boto3` (min) |",
        "|---|---:|---:|---:|",
        *(
            f"| {name} | {ms['min']:.0f} | {ms['median']:.0f} | {ms['min'] / boto:.2f} |"
            for name, ms in imports.items()
        ),
        "",
        "![pass time and calls vs fleet size](benchmarks.png)",
        "",
    ]
    return "\n".join(lines)


def _ledger_cost(scans: dict[FleetSpec, dict[str, Any]]) -> list[str]:
    """DynamoDB calls per pass (the quarantine ledger and the lease), counted like the others."""
    lines = [
        "",
        "## Quarantine ledger: DynamoDB calls per pass",
        "",
        "Every pass takes or renews the lease (one conditional `PutItem`) and reads the quarantine records "
        "(one `Query`, whatever the fleet size: more pages only past 1 MB of records); that is all while "
        "nothing leaves or returns (`tests/test_ledger_calls.py` asserts it with an empty ledger). Beyond "
        "those, a task taken out costs one `PutItem` (before its `DeregisterInstance`) and one coming back "
        "one `DeleteItem` (before its `RegisterInstance`); with HTTP probes on, the probe streaks add one "
        "`GetItem` at a cold start and one `PutItem` at the end of an invocation that changed them. "
        "Records quarantined: what the steady passes' `Query` returned (every cluster's records): the tasks "
        f"seeded UNHEALTHY ({UNHEALTHY_PER_CLUSTER} per cluster) in the clusters benchmarked so far, taken out "
        "by the first pass over their cluster (hence its extra `PutItem`s). Each call carries the injected "
        "latency, and both come before the pass reads ECS: they add about two latencies to every pass.",
        "",
        "| tasks | first pass DynamoDB calls | steady pass DynamoDB calls | records quarantined (steady) |",
        "|---:|---|---|---:|",
    ]
    for spec, scan in scans.items():
        first, *steady = scan["unlimited"]["passes"]
        lines.append(
            f"| {spec.label} | {first.get('dynamodb_calls', 0)}: {_calls(_dynamodb(first))} "
            f"| {statistics.mean(p.get('dynamodb_calls', 0) for p in steady):g}: {_calls(_dynamodb(steady[-1]))} "
            f"| {steady[-1].get('quarantined', 0)} |"
        )
    return lines


def _dynamodb(one_pass: dict[str, Any]) -> dict[str, int]:
    return {k: v for k, v in one_pass["calls"].items() if k.startswith("dynamodb:")}


def _flip_latency(flips: FlipLatency) -> list[str]:
    lines = [
        "",
        f"## Detection and restore latency, {flips.spec.label} tasks"
        + ("" if getattr(flips, "budget", DEFAULT_BUDGET) == DEFAULT_BUDGET else ", unlimited ECS reads"),
        "",
        f"A worker runs the real poller handler on the production schedule: an invocation every "
        f"{RESTORE_SCHEDULE_SECONDS:g} s in one warm container, each running a pass every {POLL_INTERVAL:g} s "
        f"until 10 s before the next (passes at 0, 10, 20, 30 and 40 s of each minute), over the cluster of "
        f"{flips.spec.label} tasks with {_budget(getattr(flips, 'budget', DEFAULT_BUDGET))} and the ledger"
        f"{', HTTP probes on' if 'HTTP probes' in flips.detected else ''}. {flips.victims} tasks (each of another "
        "service) cycle at once, each on its own thread: at a random moment (0-"
        f"{POLL_INTERVAL:g} s after the last change) made sick and timed until Cloud Map no longer lists it "
        "(detection), then at another random moment made healthy again and timed until Cloud Map lists it again "
        "(restore); Cloud Map is read straight from the emulator every 20 ms, from outside the worker. ECS "
        "health: UNHEALTHY, then HEALTHY. "
        + (
            "HTTP probes: the task's server on 127.0.0.1 answers 500, then 200 (back after "
            "`PROBE_HEALTHY_THRESHOLD` = 2 successful probes; `PROBE_FAILURE_THRESHOLD=1` here only so that it "
            "leaves within one pass). "
            if "HTTP probes" in flips.detected
            else ""
        )
        + "The victims start once the worker's first pass is over "
        f"(after {flips.warmup_seconds:.0f} s); a wait longer than {flips.limit_seconds:g} s ends that victim's "
        "cycles (a timeout).",
        "",
        "| health from | what | samples | p50 s | p99 s | min s | max s | mean s |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for what, by_kind in (("detected (out)", flips.detected), ("restored (back)", flips.restored)):
        for kind, values in by_kind.items():
            if not values:
                lines.append(f"| {kind} | {what} | 0 | n/a | n/a | n/a | n/a | n/a |")
                continue
            lines.append(
                f"| {kind} | {what} | {len(values)} | {percentile(values, 50):.2f} | {percentile(values, 99):.2f} "
                f"| {min(values):.2f} | {max(values):.2f} | {statistics.mean(values):.2f} |"
            )
    lines += [
        "",
        f"Returns whose Cloud Map attributes differed from the original ones: {flips.attributes_changed}; "
        f"waits that timed out: {flips.timeouts}. A flip lands at a random point of the pass cycle, so the "
        f"wait for the next pass is up to {POLL_INTERVAL:g} s, or up to 20 s when it falls in the gap between the "
        "last pass of an invocation and the first of the next; it then costs the pass that reads it (plus one "
        "more pass for probes' returns). p99 of a couple of dozen samples is close to their maximum.",
    ]
    return lines


def _cpu_per_100(worker: dict[str, Any] | None) -> str:
    """The worker's process CPU over its steady passes (every call, parse and decision) per 100 tasks it read."""
    if worker is None:
        return "n/a"
    steady = worker["passes"][1:]
    tasks = sum(p["tasks"] for p in steady)
    if not tasks or "cpu_seconds" not in steady[0]:
        return "n/a"
    return f"{sum(p['cpu_seconds'] for p in steady) * 1000 / tasks * 100:.1f}"


def _budget(budget: str) -> str:
    if budget == DEFAULT_BUDGET:
        return f"the default ECS read budget ({DEFAULT_BUDGET}/s)"
    return "no ECS read budget (`ECS_READS_PER_SECOND=0`)" if float(budget) == 0 else f"{budget} ECS reads/s"


def _cut(one_pass: dict[str, Any]) -> str:
    return "" if one_pass.get("complete", True) else " *"


def _fits(budget_pass: dict[str, Any]) -> str:
    if not budget_pass.get("complete", True):
        return "no (incomplete)"
    return "yes" if budget_pass["seconds"] <= POLL_INTERVAL else "no"


def _timing(timing: dict[str, float]) -> list[str]:
    parts = ", ".join(f"{name} {seconds / 60:.1f} min" for name, seconds in timing.items())
    return ["", f"Bench runtime: {parts}."]


def _cpu(cpu: dict[str, Any]) -> list[str]:
    """Client-side CPU per 100 described tasks (devtools/bench_cpu.py)."""
    full, trimmed, floor = cpu["full"], cpu["trimmed"], cpu["json_loads"]
    tasks_ratio = full["describe_100_tasks_ms"] / trimmed["describe_100_tasks_ms"]
    services_ratio = full["describe_10_services_ms"] / trimmed["describe_10_services_ms"]
    return [
        "",
        "## Client-side CPU per 100 described tasks",
        "",
        "Process CPU time of the poller's own `EcsReader.describe_tasks` (request, signing, botocore's parsing, "
        "our snapshots) for one `DescribeTasks` of 100 tasks, answered with a recorded body shaped like a real "
        f"one ({cpu['task_body_bytes'] / 1024:.0f} KiB: Fargate Service Connect tasks with two containers, ENI "
        "and Service Connect attachments, attributes, overrides, tags, timestamps; `devtools/ecs_answers.py`) "
        "through a `before-send` hook: no network, no emulator. Likewise `describe_services` for 10 services "
        f"with the 100 events ECS keeps each ({cpu['service_body_bytes'] / 1024:.0f} KiB). Best of 5 rounds. "
        "Before: the full ECS model (every member parsed); now: the trimmed model "
        "(`adapters/trimmed_model.py`: only the members read). `json.loads` of the same body is what any client "
        f"pays. Measured on {platform.machine()}; Lambda runs the functions on arm64 (Graviton), where the "
        "absolute numbers differ but the parsing work saved is the same.",
        "",
        "| call | before: full model, ms CPU | now: trimmed model, ms CPU | before / now | `json.loads` alone, ms |",
        "|---|---:|---:|---:|---:|",
        f"| DescribeTasks, 100 tasks | {full['describe_100_tasks_ms']:.2f} | {trimmed['describe_100_tasks_ms']:.2f} "
        f"| {tasks_ratio:.1f} | {floor['describe_100_tasks_ms']:.2f} |",
        f"| DescribeServices, 10 services | {full['describe_10_services_ms']:.2f} "
        f"| {trimmed['describe_10_services_ms']:.2f} | {services_ratio:.1f} | {floor['describe_10_services_ms']:.2f} |",
    ]


def percentile(values: list[float], pct: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    ordered = sorted(values)
    rank = (len(ordered) - 1) * pct / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def _calls(calls: dict[str, int]) -> str:
    return ", ".join(f"{k.split(':')[1]} x{v}" for k, v in sorted(calls.items())) or "none"


def plot(scans: dict[FleetSpec, dict[str, Any]], path: Path, latency_ms: float) -> None:
    import matplotlib  # noqa: PLC0415 - only `make bench` draws; the tests import this module too

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt  # noqa: PLC0415

    specs = list(scans)
    sizes = [spec.tasks for spec in specs]
    first_s = [scans[n]["unlimited"]["passes"][0]["seconds"] for n in specs]
    steady_s = [statistics.mean(p["seconds"] for p in scans[n]["unlimited"]["passes"][1:]) for n in specs]
    first_c = [scans[n]["unlimited"]["passes"][0]["ecs_calls"] for n in specs]
    steady_c = [
        statistics.mean(p["ecs_calls"] + p["cloudmap_calls"] for p in scans[n]["unlimited"]["passes"][1:])
        for n in specs
    ]
    floor = [pass_floor([spec.shape()]).calls for spec in specs]
    figure, (time_axis, calls_axis) = plt.subplots(1, 2, figsize=(11, 4.2))
    time_axis.plot(sizes, first_s, "o-", label="first pass")
    time_axis.plot(sizes, steady_s, "o-", label="steady pass")
    time_axis.set(xlabel="tasks", ylabel="seconds", title=f"Pass wall time ({latency_ms:g} ms per call)")
    time_axis.legend()
    calls_axis.plot(sizes, first_c, "o-", label="first pass (ECS)")
    calls_axis.plot(sizes, steady_c, "o-", label="steady pass (ECS + Cloud Map)")
    calls_axis.plot(sizes, floor, "k--", label="floor ⌈T_rel/100⌉ + cheapest listing")
    calls_axis.set(xlabel="tasks", ylabel="read calls per pass", title="Read calls per pass")
    calls_axis.legend()
    for axis in (time_axis, calls_axis):
        axis.grid(alpha=0.3)
        for spec, x in zip(specs, sizes, strict=True):
            if spec.mixed:
                axis.annotate(f"{100 / spec.cloudmap_every:g}% in Cloud Map", (x, 0), fontsize=7, rotation=90)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _cores() -> int:
    return os.cpu_count() or 1
