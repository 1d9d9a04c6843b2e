"""Where a `cloudmap-reactor` command runs: the account, the region, the stack, what it found.

Every report of the CLI starts with this, text and JSON alike, because a read-only tool run in the
wrong account or region finds nothing and would otherwise say that all is well. The region is
resolved here, explicitly, as the AWS CLI resolves it: ``--region``, then ``AWS_REGION``, then
``AWS_DEFAULT_REGION``, then the profile's ``region`` (botocore alone never reads ``AWS_REGION``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import boto3

VERSION_OUTPUT = "Version"  # the stack output naming the deployed version (template.yaml, when present)
REGION_VARIABLES = ("AWS_REGION", "AWS_DEFAULT_REGION")


class CommandError(RuntimeError):
    """The command cannot run as asked (no region, no such stack, no ledger): exit 2 with this message."""


@dataclass(frozen=True, slots=True)
class Target:
    """The boto3 session a command uses, its region, and where that region came from."""

    session: boto3.Session
    region: str
    region_source: str


def aws_target(profile: str | None, region: str | None, env: Mapping[str, str] | None = None) -> Target:
    """The session for ``--profile``/``--region``, with the region resolved as the AWS CLI does."""
    env = os.environ if env is None else env
    source = "--region" if region else ""
    for variable in REGION_VARIABLES:
        if not region and env.get(variable, "").strip():
            region, source = env[variable].strip(), variable
    session = boto3.Session(profile_name=profile, region_name=region or None)
    if not session.region_name:
        raise CommandError(
            "no AWS region: give --region, or set AWS_REGION or AWS_DEFAULT_REGION, or a region in the profile"
        )
    return Target(session, session.region_name, source or f"profile {session.profile_name}")


def stack_parameters(stack: Mapping[str, Any] | None) -> dict[str, str]:
    return {p["ParameterKey"]: p.get("ParameterValue", "") for p in (stack or {}).get("Parameters", [])}


def stack_outputs(stack: Mapping[str, Any] | None) -> dict[str, str]:
    return {o["OutputKey"]: o.get("OutputValue", "") for o in (stack or {}).get("Outputs", [])}


@dataclass(slots=True)
class Context:
    """The head of every report. ``found`` and ``warnings`` grow as the command reads."""

    account: str
    caller: str
    target: Target
    stack_name: str | None = None
    stack: Mapping[str, Any] | None = None  # DescribeStacks' answer for ``stack_name``
    settings: str = ""  # what the judgement is based on (the stack's parameters, or the defaults)
    found: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def version(self) -> str | None:
        return stack_outputs(self.stack).get(VERSION_OUTPUT) or None

    def warn(self, text: str) -> None:
        self.warnings.append(text)

    def lines(self) -> list[str]:
        """The report's first lines (text): warnings are in capitals so that nobody misses them."""
        lines = [
            f"account  {self.account} ({self.caller})",
            f"region   {self.target.region} (from {self.target.region_source})",
        ]
        if self.stack_name:
            status = self.stack.get("StackStatus", "?") if self.stack else "?"
            version = f", version {self.version}" if self.version else ""
            lines.append(f"stack    {self.stack_name} ({status}{version})")
        else:
            lines.append("stack    none given (--stack NAME)")
        if self.settings:
            lines.append(f"settings {self.settings}")
        lines += [f"found    {text}" for text in self.found]
        lines += [f"WARNING: {text}" for text in self.warnings]
        return [*lines, ""]

    def as_json(self) -> dict[str, Any]:
        return {
            "account": self.account,
            "caller": self.caller,
            "region": self.target.region,
            "region_source": self.target.region_source,
            "stack": self.stack_name,
            "stack_status": self.stack.get("StackStatus") if self.stack else None,
            "version": self.version,
            "settings": self.settings or None,
            "found": list(self.found),
        }


def open_context(sts: Any, target: Target, stack_name: str | None, stack: Mapping[str, Any] | None) -> Context:
    """Who the caller is (``sts:GetCallerIdentity``, which needs no permission) and where."""
    identity = sts.get_caller_identity()
    return Context(
        account=identity["Account"], caller=identity["Arn"], target=target, stack_name=stack_name, stack=stack
    )


def with_context(context: Context, document: Mapping[str, Any]) -> dict[str, Any]:
    """A command's JSON document under its context and warnings."""
    return {"context": context.as_json(), "warnings": list(context.warnings), **document}
