"""The policy: every setting of both functions, parsed and bounded once per container.

``Policy``'s field defaults are the only place defaults live. Each field says which environment
variable sets it, which template parameter feeds that variable, and its range, so the functions
(``Policy.from_env``), the CLI (``Policy.from_stack_parameters``: what a deployed stack does) and
a test of template.yaml's defaults all read the same table. Untrusted text is parsed strictly:
ASCII digits only (``²`` is a digit to ``str.isdigit``), no exponents, every range enforced, and
an error that names each bad variable with its value and its range.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from cloudmap_reactor.core.model import TagScope

CLUSTER_ARN_PATTERN = re.compile(
    r"^arn:aws(?:-[a-z]+)*:ecs:([a-z]{2}(?:-[a-z]+)+-[0-9]{1,2}):([0-9]{12}):cluster/[A-Za-z0-9_-]{1,255}$"
)
_NUMBER = re.compile(r"^[0-9]{1,6}(?:\.[0-9]{1,6})?$")  # ASCII only; no sign, exponent, inf or nan
_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off", ""}
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
# The names Lambda's advanced logging controls use (and Python's logging accepts WARN and FATAL).
LOG_LEVEL_ALIASES = {"TRACE": "DEBUG", "WARN": "WARNING", "FATAL": "CRITICAL"}
_RATE = re.compile(r"^rate\(([1-9][0-9]{0,4}) (minute|minutes|hour|hours|day|days)\)$")
# As the template's ClusterTag pattern: no space around the key or the value (a tag "env " is not "env").
_CLUSTER_TAG = re.compile(r"^[^=,\s](?:[^=,]{0,126}[^=,\s])?=(?:[^,\s](?:[^,]{0,254}[^,\s])?)?$")
_TABLE_NAME = re.compile(r"^[A-Za-z0-9_.-]{3,255}$")
_CRON = re.compile(r"^cron\([^()]{9,200}\)$")
_UNIT_SECONDS = {"minute": 60, "hour": 3600, "day": 86400}
DEFAULT_ECS_READS_PER_SECOND = 10.0


class ConfigError(ValueError):
    """The environment does not describe a valid configuration; the message lists every problem."""


def _setting(
    default: Any,
    env: str,
    parameter: str | None = None,
    *,
    low: float | None = None,
    high: float | None = None,
    integer: bool = False,
    zero_or_at_least: float | None = None,
) -> Any:
    """A policy field: its default, where it is set, and its range (numbers)."""
    meta = {"env": env, "parameter": parameter, "low": low, "high": high, "integer": integer, "zero": zero_or_at_least}
    return field(default=default, metadata=meta)


@dataclass(frozen=True, slots=True)
class Policy:
    """Everything the functions read from their environment (the only home of defaults)."""

    cluster_arns: tuple[str, ...] = _setting((), "CLUSTER_ARNS", "ClusterArns")  # empty: every cluster
    # Emergency stop: false makes both functions return at once, without any AWS call.
    enabled: bool = _setting(True, "ENABLED", "Enabled")
    # key=value: the clusters carrying this tag (found by ListClusters + DescribeClusters); empty: not used
    cluster_tag: str = _setting("", "CLUSTER_TAG", "ClusterTag")
    dry_run: bool = _setting(False, "DRY_RUN", "DryRun")
    # POWERTOOLS_LOG_LEVEL, when set, wins over LOG_LEVEL (as in Powertools; see log_level_setting).
    log_level: str = _setting("INFO", "LOG_LEVEL", "LogLevel")
    tag_scope: TagScope = _setting(TagScope.OPT_OUT, "TAG_SCOPE", "TagScope")  # noqa: RUF009 (an immutable enum)
    # Reactor
    service_cache_ttl_seconds: float = _setting(
        30.0, "SERVICE_CACHE_TTL_SECONDS", "ServiceCacheTtlSeconds", low=0, high=3600
    )
    # Health poller: passes every interval for a window (None: sized from the schedule)
    poll_schedule: str = _setting("rate(1 minute)", "POLL_SCHEDULE", "PollSchedule")
    poll_interval_seconds: float = _setting(10.0, "POLL_INTERVAL_SECONDS", "PollIntervalSeconds", low=1, high=300)
    poll_window_seconds: float | None = _setting(None, "POLL_WINDOW_SECONDS", "PollWindowSeconds", low=0, high=900)
    # A new refresh cycle of a cluster's services (ListServices, then each service described
    # again, oldest first) starts at most every this many passes (and only when the last one ended).
    service_refresh_passes: int = _setting(6, "SERVICE_REFRESH_PASSES", low=1, high=10_000, integer=True)
    # The share of a pass's ECS read budget (EcsReadsPerSecond x PollIntervalSeconds) spent on
    # refreshing services (see ``service_refresh_reads``).
    service_refresh_share: float = _setting(0.2, "SERVICE_REFRESH_SHARE", "ServiceRefreshShare", low=0.01, high=1)
    ecs_reads_per_second: float = _setting(
        DEFAULT_ECS_READS_PER_SECOND,
        "ECS_READS_PER_SECOND",
        "EcsReadsPerSecond",
        low=0,
        high=1000,
        zero_or_at_least=0.5,
    )
    scan_concurrency: int = _setting(8, "SCAN_CONCURRENCY", low=1, high=64, integer=True)
    # Who may leave, and when
    min_healthy_percent: float = _setting(50.0, "MIN_HEALTHY_PERCENT", "MinHealthyPercent", low=0, high=100)
    reconcile_every_passes: int = _setting(
        6, "RECONCILE_EVERY_PASSES", "ReconcileEveryPasses", low=0, high=10_000, integer=True
    )
    redeploy_stale_clients: bool = _setting(False, "REDEPLOY_STALE_CLIENTS", "RedeployStaleClients")
    stale_check_every_endpoint: bool = _setting(False, "STALE_CHECK_ALL_ENDPOINTS", "StaleCheckAllEndpoints")
    # HTTP probes: on only when the poller can reach the tasks (the template sets HTTP_PROBES
    # when it places the function in a VPC).
    http_probes: bool = _setting(False, "HTTP_PROBES")
    probe_connect_timeout_seconds: float = _setting(
        1.0, "PROBE_CONNECT_TIMEOUT_SECONDS", "ProbeConnectTimeoutSeconds", low=0.1, high=5
    )
    probe_read_timeout_seconds: float = _setting(
        2.0, "PROBE_READ_TIMEOUT_SECONDS", "ProbeReadTimeoutSeconds", low=0.1, high=10
    )
    probe_failure_threshold: int = _setting(
        3, "PROBE_FAILURE_THRESHOLD", "ProbeFailureThreshold", low=1, high=10, integer=True
    )
    probe_concurrency: int = _setting(32, "PROBE_CONCURRENCY", "ProbeConcurrency", low=1, high=128, integer=True)
    probe_healthy_threshold: int = _setting(
        2, "PROBE_HEALTHY_THRESHOLD", "ProbeHealthyThreshold", low=1, high=10, integer=True
    )
    # Quarantine: health removals of running tasks are recorded and undone on recovery
    ledger_table: str = _setting("", "LEDGER_TABLE")  # the DynamoDB table (the template creates it)
    return_on_recovery: bool = _setting(True, "RETURN_ON_RECOVERY", "ReturnOnRecovery")
    hold_until_healthy: bool = _setting(False, "HOLD_UNTIL_HEALTHY", "HoldUntilHealthy")  # every service
    replace_after_seconds: float = _setting(
        0.0, "REPLACE_AFTER_SECONDS", "ReplaceAfterSeconds", low=0, high=86_400
    )  # 0: never stop a quarantined task
    # Local runs only (tests, demo, bench): lets probes reach loopback. Never a template parameter.
    probe_allow_loopback: bool = _setting(False, "PROBE_ALLOW_LOOPBACK")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Policy:
        """Parse ``env`` (default: ``os.environ``); raise ``ConfigError`` naming every bad variable."""
        env = os.environ if env is None else env
        problems: list[str] = []
        values = {f.name: _parse(f, env.get(f.metadata["env"]), problems) for f in fields(cls) if f.name != "log_level"}
        values["log_level"] = _parse_log_level(*log_level_setting(env), problems)  # two variables
        region = env.get("AWS_REGION", "").strip()
        for arn in values["cluster_arns"]:
            match = CLUSTER_ARN_PATTERN.fullmatch(arn)
            if match and region and match.group(1) != region:
                problems.append(f"CLUSTER_ARNS entry {arn!r} is in {match.group(1)}, not in this region ({region})")
        if len({m.group(2) for arn in values["cluster_arns"] if (m := CLUSTER_ARN_PATTERN.fullmatch(arn))}) > 1:
            problems.append("CLUSTER_ARNS names clusters of more than one account")
        if values["cluster_arns"] and values["cluster_tag"]:
            problems.append("CLUSTER_ARNS and CLUSTER_TAG are both set: name the clusters one way")
        if problems:
            raise ConfigError("invalid configuration: " + "; ".join(problems))
        return cls(**values)

    @classmethod
    def from_stack_parameters(cls, parameters: Mapping[str, str], env: Mapping[str, str] | None = None) -> Policy:
        """The policy a deployed stack runs with, from its CloudFormation parameters (the CLI's ``--stack``)."""
        variables = dict(env or {})
        for f in fields(cls):
            if f.metadata["parameter"] in parameters:
                variables[f.metadata["env"]] = parameters[f.metadata["parameter"]]
        return cls.from_env(variables)

    @property
    def poll_schedule_seconds(self) -> float | None:
        """Period of a ``rate(...)`` schedule; None for ``cron(...)``."""
        return schedule_period_seconds(self.poll_schedule)

    @property
    def service_refresh_reads(self) -> int:
        """ECS reads a pass may spend refreshing services, over all clusters (at least one).

        ``service_refresh_share`` of what the read budget allows in one interval; with no budget
        (``ecs_reads_per_second`` 0), of what the default budget would (10 reads/s).
        """
        rate = self.ecs_reads_per_second or DEFAULT_ECS_READS_PER_SECOND
        return max(1, int(self.service_refresh_share * rate * self.poll_interval_seconds))

    def in_scope(self, cluster_arn: str) -> bool:
        """False when ``ClusterArns`` names other clusters; True otherwise.

        With ``ClusterTag`` this cannot tell (the tag is on the cluster, in ECS): callers that take
        clusters from events also ask ``adapters.clusters.ClusterDirectory.carries``.
        """
        return not self.cluster_arns or cluster_arn in self.cluster_arns

    @property
    def cluster_tag_pair(self) -> tuple[str, str] | None:
        """``cluster_tag`` as (key, value); None when clusters are not found by tag."""
        key, _, value = self.cluster_tag.partition("=")
        return (key, value) if self.cluster_tag else None

    @staticmethod
    def environment_of(name: str) -> tuple[str, str | None]:
        """(environment variable, template parameter) of a field: the template test reads this."""
        spec = next(f for f in fields(Policy) if f.name == name)
        return spec.metadata["env"], spec.metadata["parameter"]


def defaults_by_parameter() -> dict[str, Any]:
    """Template parameter -> the policy's default for it (what template.yaml's defaults must equal)."""
    return {f.metadata["parameter"]: f.default for f in fields(Policy) if f.metadata["parameter"]}


def schedule_period_seconds(expression: str) -> float | None:
    """``rate(5 minutes)`` → 300; None for ``cron(...)`` or anything else."""
    match = _RATE.fullmatch(expression.strip())
    if not match:
        return None
    return float(int(match.group(1)) * _UNIT_SECONDS[match.group(2).rstrip("s")])


def _parse(spec: Any, raw: str | None, problems: list[str]) -> Any:
    """One field from its variable's text (None or blank: the default)."""
    text = (raw or "").strip()
    special = _PARSERS.get(spec.name)
    if special is not None:
        return special(text, problems)
    if spec.name == "poll_window_seconds" and text.lower() in ("", "auto"):
        return None
    if isinstance(spec.default, bool):
        return _parse_bool(spec.metadata["env"], text, spec.default, problems)
    return _parse_number(spec, text, problems)


def log_level_setting(env: Mapping[str, str]) -> tuple[str, str]:
    """(variable, text) of the log level: ``POWERTOOLS_LOG_LEVEL`` wins over ``LOG_LEVEL``, as in Powertools.

    Lambda's advanced logging controls (``AWS_LAMBDA_LOG_LEVEL``) win over both inside Powertools.
    """
    for name in ("POWERTOOLS_LOG_LEVEL", "LOG_LEVEL"):
        text = (env.get(name) or "").strip()
        if text:
            return name, text
    return "LOG_LEVEL", ""


def valid_log_level(text: str) -> str | None:
    """The level named by ``text`` (any case; Lambda's TRACE, WARN and FATAL too), or None when it names none."""
    level = text.strip().upper() or "INFO"
    level = LOG_LEVEL_ALIASES.get(level, level)
    return level if level in LOG_LEVELS else None


def _parse_log_level(name: str, text: str, problems: list[str]) -> str:
    level = valid_log_level(text)
    if level is None:
        problems.append(f"{name}={text[:40]!r} is not a log level: use one of {list(LOG_LEVELS)}")
    return level or "INFO"


def _parse_tag_scope(text: str, problems: list[str]) -> TagScope:
    scope = text.lower() or TagScope.OPT_OUT.value
    if scope in {s.value for s in TagScope}:
        return TagScope(scope)
    problems.append(f"TAG_SCOPE={scope!r} must be one of {[s.value for s in TagScope]}")
    return TagScope.OPT_OUT


def _parse_number(spec: Any, text: str, problems: list[str]) -> float | int | None:
    meta = spec.metadata
    if not text:
        return spec.default  # type: ignore[no-any-return]
    low, high, integer, zero = meta["low"], meta["high"], meta["integer"], meta["zero"]
    value = float(text) if _NUMBER.fullmatch(text) else None
    fits = value is not None and low <= value <= high and (not integer or value.is_integer())
    if fits and zero is not None and value != 0 and value is not None and value < zero:
        fits = False
    if not fits or value is None:
        kind = "a whole number" if integer else "a number"
        extra = f" (0 turns it off; otherwise at least {zero:g})" if zero is not None else ""
        problems.append(f"{meta['env']}={text!r} must be {kind} from {low:g} to {high:g}{extra}")
        return spec.default  # type: ignore[no-any-return]
    return int(value) if integer else value


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


def _parse_cluster_tag(text: str, problems: list[str]) -> str:
    if not text or _CLUSTER_TAG.fullmatch(text):
        return text
    problems.append(
        f"CLUSTER_TAG={text[:80]!r} must be key=value (an ECS cluster tag, no commas, no space around key or value)"
    )
    return ""


def _parse_schedule(text: str, problems: list[str]) -> str:
    text = text or "rate(1 minute)"
    if _RATE.fullmatch(text) or _CRON.fullmatch(text):
        return text
    problems.append(
        f"POLL_SCHEDULE={text!r} must be rate(<n> minute(s)|hour(s)|day(s)) with n from 1 to 99999, or cron(...)"
    )
    return "rate(1 minute)"


def _parse_bool(name: str, raw: str, default: bool, problems: list[str]) -> bool:
    value = raw.strip().lower()
    if not value:
        return default
    if value in _TRUE:
        return True
    if value not in _FALSE:
        problems.append(f"{name}={raw!r} must be true or false")
    return False


def _parse_table_name(text: str, problems: list[str]) -> str:
    if not text or _TABLE_NAME.fullmatch(text):
        return text
    problems.append(f"LEDGER_TABLE={text[:80]!r} is not a DynamoDB table name (3-255 of A-Z a-z 0-9 _ . -)")
    return ""


_PARSERS: dict[str, Callable[[str, list[str]], Any]] = {
    "ledger_table": _parse_table_name,
    "cluster_arns": _parse_cluster_arns,
    "cluster_tag": _parse_cluster_tag,
    "poll_schedule": _parse_schedule,
    "tag_scope": _parse_tag_scope,
}
