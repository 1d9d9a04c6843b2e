"""Translate SDK errors (raised after botocore's own retries) into the core's ``AwsCallFailed``."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from botocore.exceptions import BotoCoreError, ClientError

from cloudmap_reactor.core.ports import AwsCallFailed


def error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


@contextmanager
def aws_call(operation: str, target: str | None = None) -> Iterator[None]:
    """``with aws_call("DescribeTasks", cluster_arn): …`` names the failed call in the error."""
    try:
        yield
    except (ClientError, BotoCoreError) as exc:
        where = f"{operation} on {target}" if target else operation
        raise AwsCallFailed(f"{where} failed: {exc}") from exc
