"""Settings from environment variables, parsed and validated once per container."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

CLUSTER_ARN_PATTERN = re.compile(
    r"^arn:aws(?:-[a-z]+)*:ecs:[a-z]{2}(?:-[a-z]+)+-\d{1,2}:\d{12}:cluster/[A-Za-z0-9_-]{1,255}$"
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

        ttl_text = env.get("SERVICE_CACHE_TTL_SECONDS", "30").strip() or "30"
        try:
            ttl = float(ttl_text)
            if not 0 <= ttl <= 3600:
                raise ValueError
        except ValueError:
            problems.append(f"SERVICE_CACHE_TTL_SECONDS={ttl_text!r} must be a number of seconds from 0 to 3600")
            ttl = 0.0

        if problems:
            raise ConfigError("invalid configuration: " + "; ".join(problems))
        return cls(
            cluster_arns=cluster_arns,
            dry_run=dry_run,
            log_level=log_level,
            service_cache_ttl_seconds=ttl,
        )

    def in_scope(self, cluster_arn: str) -> bool:
        """True when the cluster is one this deployment looks after."""
        return not self.cluster_arns or cluster_arn in self.cluster_arns


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
