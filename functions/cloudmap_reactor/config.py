"""Settings from environment variables, parsed and validated once per container."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

from cloudmap_reactor.core.model import TagScope

CLUSTER_ARN_PATTERN = re.compile(
    r"^arn:aws(?:-[a-z]+)*:ecs:[a-z]{2}(?:-[a-z]+)+-[0-9]{1,2}:[0-9]{12}:cluster/[A-Za-z0-9_-]{1,255}$"
)
_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off", ""}
_LOG_LEVELS = {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}


class ConfigError(ValueError):
    """The environment does not describe a valid configuration; the message lists every problem."""


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the functions read from their environment.

    ``cluster_arns`` empty means every cluster of the account and region.
    """

    cluster_arns: tuple[str, ...] = ()
    dry_run: bool = False
    log_level: str = "INFO"
    service_cache_ttl_seconds: float = 30.0
    # Health poller
    poll_interval_seconds: float = 10.0
    poll_window_seconds: float | None = None  # None: sized from the schedule and the remaining time
    poll_schedule_seconds: float | None = None  # period of a rate(...) POLL_SCHEDULE; None for cron(...)
    service_refresh_passes: int = 6
    ecs_reads_per_second: float = 10.0  # 0: no budget
    scan_concurrency: int = 8
    # Safety
    tag_scope: TagScope = TagScope.OPT_OUT
    min_healthy_percent: float = 50.0
    reconcile_every_passes: int = 6  # 0: never
    # Start order
    redeploy_stale_clients: bool = False
    stale_check_every_endpoint: bool = False
    # HTTP probes: on only when the poller can reach the tasks (the template sets HTTP_PROBES
    # when it places the function in a VPC).
    http_probes: bool = False
    probe_connect_timeout_seconds: float = 1.0
    probe_read_timeout_seconds: float = 2.0
    probe_failure_threshold: int = 3
    probe_concurrency: int = 32
    probe_allow_loopback: bool = False  # PROBE_ALLOW_LOOPBACK: local runs against 127.0.0.1; never in the template

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Parse ``env`` (default: ``os.environ``); raise ``ConfigError`` naming every bad variable."""
        env = os.environ if env is None else env
        problems: list[str] = []

        cluster_arns = _parse_cluster_arns(env.get("CLUSTER_ARNS", ""), problems)
        dry_run = _parse_bool("DRY_RUN", env.get("DRY_RUN", "false"), problems)

        log_level = env.get("LOG_LEVEL", "INFO").strip().upper() or "INFO"
        if log_level not in _LOG_LEVELS:
            problems.append(f"LOG_LEVEL={log_level!r} is not one of {sorted(_LOG_LEVELS)}")

        number = _NumberParser(env, problems)
        ttl = number("SERVICE_CACHE_TTL_SECONDS", default=30, low=0, high=3600)
        interval = number("POLL_INTERVAL_SECONDS", default=10, low=1, high=300)
        window_text = env.get("POLL_WINDOW_SECONDS", "").strip().lower()
        window = None if window_text in ("", "auto") else number("POLL_WINDOW_SECONDS", default=0, low=0, high=900)
        refresh = int(number("SERVICE_REFRESH_PASSES", default=6, low=1, high=10_000, integer=True))
        budget = number("ECS_READS_PER_SECOND", default=10, low=0, high=1000)
        concurrency = int(number("SCAN_CONCURRENCY", default=8, low=1, high=64, integer=True))
        redeploy = _parse_bool("REDEPLOY_STALE_CLIENTS", env.get("REDEPLOY_STALE_CLIENTS", "false"), problems)
        every_endpoint = _parse_bool(
            "STALE_CHECK_ALL_ENDPOINTS", env.get("STALE_CHECK_ALL_ENDPOINTS", "false"), problems
        )
        http_probes = _parse_bool("HTTP_PROBES", env.get("HTTP_PROBES", "false"), problems)
        connect_timeout = number("PROBE_CONNECT_TIMEOUT_SECONDS", default=1, low=0.1, high=5)
        read_timeout = number("PROBE_READ_TIMEOUT_SECONDS", default=2, low=0.1, high=10)
        threshold = int(number("PROBE_FAILURE_THRESHOLD", default=3, low=1, high=10, integer=True))
        probe_concurrency = int(number("PROBE_CONCURRENCY", default=32, low=1, high=128, integer=True))
        allow_loopback = _parse_bool("PROBE_ALLOW_LOOPBACK", env.get("PROBE_ALLOW_LOOPBACK", "false"), problems)
        min_healthy = number("MIN_HEALTHY_PERCENT", default=50, low=0, high=100)
        reconcile = int(number("RECONCILE_EVERY_PASSES", default=6, low=0, high=10_000, integer=True))
        scope_text = env.get("TAG_SCOPE", "").strip().lower() or TagScope.OPT_OUT.value
        if scope_text not in {s.value for s in TagScope}:
            problems.append(f"TAG_SCOPE={scope_text!r} must be one of {[s.value for s in TagScope]}")
            scope_text = TagScope.OPT_OUT.value
        schedule = env.get("POLL_SCHEDULE", "").strip()
        schedule_seconds = schedule_period_seconds(schedule)
        if schedule and schedule_seconds is None and not schedule.startswith("cron("):
            problems.append(f"POLL_SCHEDULE={schedule!r} is neither rate(<n> <unit>) nor cron(...)")

        if problems:
            raise ConfigError("invalid configuration: " + "; ".join(problems))
        return cls(
            cluster_arns=cluster_arns,
            dry_run=dry_run,
            log_level=log_level,
            service_cache_ttl_seconds=ttl,
            poll_interval_seconds=interval,
            poll_window_seconds=window,
            poll_schedule_seconds=schedule_seconds,
            service_refresh_passes=refresh,
            ecs_reads_per_second=budget,
            scan_concurrency=concurrency,
            tag_scope=TagScope(scope_text),
            min_healthy_percent=min_healthy,
            reconcile_every_passes=reconcile,
            redeploy_stale_clients=redeploy,
            stale_check_every_endpoint=every_endpoint,
            http_probes=http_probes,
            probe_connect_timeout_seconds=connect_timeout,
            probe_read_timeout_seconds=read_timeout,
            probe_failure_threshold=threshold,
            probe_concurrency=probe_concurrency,
            probe_allow_loopback=allow_loopback,
        )

    def in_scope(self, cluster_arn: str) -> bool:
        """True when the cluster is one this deployment looks after."""
        return not self.cluster_arns or cluster_arn in self.cluster_arns


_RATE = re.compile(r"^rate\(([0-9]+) (minute|minutes|hour|hours|day|days)\)$")
_UNIT_SECONDS = {"minute": 60, "hour": 3600, "day": 86400}


def schedule_period_seconds(expression: str) -> float | None:
    """``rate(5 minutes)`` → 300; None for ``cron(...)`` or anything else."""
    match = _RATE.fullmatch(expression.strip())
    if not match:
        return None
    return float(int(match.group(1)) * _UNIT_SECONDS[match.group(2).rstrip("s")])


@dataclass
class _NumberParser:
    env: Mapping[str, str]
    problems: list[str]

    def __call__(self, name: str, *, default: float, low: float, high: float, integer: bool = False) -> float:
        text = self.env.get(name, "").strip() or str(default)
        try:
            value = float(text)
            if not low <= value <= high or (integer and not value.is_integer()):
                raise ValueError
        except ValueError:
            kind = "a whole number" if integer else "a number"
            self.problems.append(f"{name}={text!r} must be {kind} from {low:g} to {high:g}")
            return float(default)
        return value


def _parse_cluster_arns(raw: str, problems: list[str]) -> tuple[str, ...]:
    arns: list[str] = []
    for item in raw.split(","):
        arn = item.strip()
        if not arn:
            continue
        if not CLUSTER_ARN_PATTERN.fullmatch(arn):
            problems.append(f"CLUSTER_ARNS entry {arn!r} is not an ECS cluster ARN")
        elif arn not in arns:
            arns.append(arn)
    return tuple(arns)


def _parse_bool(name: str, raw: str, problems: list[str]) -> bool:
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value not in _FALSE:
        problems.append(f"{name}={raw!r} must be true or false")
    return False
