"""Translate SDK errors (raised after botocore's own retries) into the core's ``AwsCallFailed``."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager

from botocore.exceptions import BotoCoreError, ClientError

from cloudmap_reactor.adapters.deadline import DeadlineExceeded
from cloudmap_reactor.core.ports import AwsCallFailed, ClusterNotFound

# Codes AWS answers when the caller's role lacks a permission (IAM, SCP, permissions boundary).
ACCESS_DENIED = ("AccessDenied", "AccessDeniedException", "UnauthorizedOperation", "UnauthorizedException")


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
    except ClientError as exc:
        failure = ClusterNotFound if error_code(exc) == "ClusterNotFoundException" else AwsCallFailed
        raise failure(f"{where} failed: {exc}") from exc
    except BotoCoreError as exc:
        raise AwsCallFailed(f"{where} failed: {exc}") from exc


def denied_operation(error: str) -> str | None:
    """The operation an error message says AWS denied (``AccessDenied…`` of ``aws_call``), else None.

    Failures travel as text in the records of a pass, so the reports read it back from there.
    """
    match = _DENIED.search(error)
    return match.group(2) if match else None


_DENIED = re.compile(r"\((" + "|".join(ACCESS_DENIED) + r")\) when calling the (\w+) operation")
