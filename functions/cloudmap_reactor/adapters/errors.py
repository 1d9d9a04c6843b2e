"""Translate SDK errors (raised after botocore's own retries) into the core's ``AwsCallFailed``."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from botocore.exceptions import BotoCoreError, ClientError

from cloudmap_reactor.adapters.deadline import DeadlineExceeded
from cloudmap_reactor.core.ports import AwsCallFailed


def error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


@contextmanager
def aws_call(operation: str, target: str | None = None) -> Iterator[None]:
    """``with aws_call("DescribeTasks", cluster_arn): …`` names the failed call in the error.

    A ``DeadlineExceeded`` (raised by the deadline hooks, which know the operation but not what
    it was about) gets the target added once, by the innermost ``aws_call``.
    """
    where = f"{operation} on {target}" if target else operation
    try:
        yield
    except DeadlineExceeded as exc:
        if exc.located:
            raise
        detail = str(exc).removeprefix(f"{operation}: ")
        located = DeadlineExceeded(f"{where}: {detail}")
        located.located = True
        raise located from exc
    except (ClientError, BotoCoreError) as exc:
        raise AwsCallFailed(f"{where} failed: {exc}") from exc
