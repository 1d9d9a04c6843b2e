"""The quarantine ledger in DynamoDB: records of instances taken out while their task runs, probe streaks, the lease.

One table (``LEDGER_TABLE``, created by the template), keys ``pk``/``sk``:

* ``quarantine`` / ``<Cloud Map service id>#<instance id>``: one record per instance taken out for
  health, with the instance's attributes exactly as Cloud Map held them. A pass reads them all with
  one ``Query`` (the only read of a pass when nothing is quarantined).
* ``probe-streaks`` / ``poller``: the probe streaks, so that a failure streak (and readiness) carries
  over to a new container; read on a cold start, written when an invocation changed them.
* ``lease`` / ``poller``: which poller invocation may act now, until when. A conditional write
  takes it (free, expired, or already ours), each pass renews it, the end of an invocation releases
  it, so the next one never waits for an expiry.

Every item carries ``expires_at`` (epoch seconds, the table's TTL attribute): a record whose task
is long gone cannot linger for ever even if no poller runs.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from cloudmap_reactor.adapters.errors import aws_call, error_code
from cloudmap_reactor.core.decisions import InstanceKey, ProbeStreak, QuarantineRecord, Rule
from cloudmap_reactor.core.model import Reason

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

QUARANTINE = "quarantine"
STREAKS = ("probe-streaks", "poller")
LEASE = ("lease", "poller")
RECORD_DAYS = 14  # TTL of a quarantine record (the poller forgets it long before, once its task stops)
_CONDITION_FAILED = "ConditionalCheckFailedException"


class DynamoDbLedger:
    """The ledger as the poller and the reactor see it."""

    def __init__(self, client: DynamoDBClient, table: str, *, clock: Callable[[], float] = time.time) -> None:
        self._client = client
        self._table = table
        self._clock = clock

    # -- quarantine records -------------------------------------------------------------------
    def quarantined(self) -> tuple[list[QuarantineRecord], int]:
        """Every quarantine record (one Query; more pages only past 1 MB), and how many items were unreadable.

        An unreadable item (not written by ``record``) is skipped and counted: never acted on.
        """
        with aws_call("Query", self._table):
            pages = self._client.get_paginator("query").paginate(
                TableName=self._table,
                KeyConditionExpression="pk = :pk",
                ExpressionAttributeValues={":pk": {"S": QUARANTINE}},
                ConsistentRead=True,
            )
            items = [item for page in pages for item in page.get("Items", [])]
        records = [record for item in items if (record := _record(item)) is not None]
        return records, len(items) - len(records)

    def record(self, record: QuarantineRecord) -> QuarantineRecord:
        """Write the record (stamped now) before its instance is deregistered; raises when it could not be written."""
        now = self._clock()
        item: dict[str, Any] = {
            "pk": {"S": QUARANTINE},
            "sk": {"S": f"{record.cloudmap_service_id}#{record.instance_id}"},
            "cloudmap_service_id": {"S": record.cloudmap_service_id},
            "instance_id": {"S": record.instance_id},
            "attributes": {"M": {k: {"S": v} for k, v in record.attributes.items()}},
            "task_arn": {"S": record.task_arn},
            "cluster_arn": {"S": record.cluster_arn},
            "service_name": {"S": record.service_name},
            "reason": {"S": record.reason.value},
            "rule": {"S": record.rule.value},
            "since": {"N": repr(now)},
            "expires_at": {"N": str(int(now) + RECORD_DAYS * 86_400)},
        }
        with aws_call("PutItem", self._table):
            self._client.put_item(TableName=self._table, Item=item)
        return replace(record, since=now)

    def forget(self, record: QuarantineRecord) -> bool:
        """Delete the record; False when it was already gone (someone else restored or forgot it)."""
        key = {"pk": {"S": QUARANTINE}, "sk": {"S": f"{record.cloudmap_service_id}#{record.instance_id}"}}
        with aws_call("DeleteItem", self._table):
            try:
                self._client.delete_item(TableName=self._table, Key=key, ConditionExpression="attribute_exists(pk)")
            except ClientError as exc:
                if error_code(exc) == _CONDITION_FAILED:
                    return False
                raise
        return True

    # -- probe streaks ------------------------------------------------------------------------
    def load_streaks(self) -> dict[InstanceKey, ProbeStreak]:
        with aws_call("GetItem", self._table):
            item = self._client.get_item(TableName=self._table, Key=_key(STREAKS), ConsistentRead=True).get("Item")
        if not item or "streaks" not in item:
            return {}
        try:
            raw = json.loads(item["streaks"]["S"])
            return {(sid, iid): ProbeStreak(int(f), int(s), bool(p)) for sid, iid, f, s, p in raw}
        except (ValueError, TypeError, KeyError):
            return {}  # unreadable: start afresh rather than act on it

    def save_streaks(self, streaks: Mapping[InstanceKey, ProbeStreak]) -> None:
        rows = [[sid, iid, s.failures, s.successes, s.passed] for (sid, iid), s in sorted(streaks.items())]
        item = {
            **_key(STREAKS),
            "streaks": {"S": json.dumps(rows, separators=(",", ":"))},
            "expires_at": {"N": str(int(self._clock()) + RECORD_DAYS * 86_400)},
        }
        with aws_call("PutItem", self._table):
            self._client.put_item(TableName=self._table, Item=item)

    # -- the lease ----------------------------------------------------------------------------
    def hold_lease(self, owner: str, seconds: float) -> bool:
        """Take or renew the lease for ``seconds``; False when another invocation holds it."""
        now = self._clock()
        with aws_call("PutItem", self._table):
            try:
                self._client.put_item(
                    TableName=self._table,
                    Item={**_key(LEASE), "owner": {"S": owner}, "expires_at": {"N": repr(now + seconds)}},
                    ConditionExpression="attribute_not_exists(pk) OR expires_at < :now OR #owner = :owner",
                    ExpressionAttributeNames={"#owner": "owner"},
                    ExpressionAttributeValues={":now": {"N": repr(now)}, ":owner": {"S": owner}},
                )
            except ClientError as exc:
                if error_code(exc) == _CONDITION_FAILED:
                    return False
                raise
        return True

    def release_lease(self, owner: str) -> None:
        """Let the next invocation act at once (only our own lease is released)."""
        with aws_call("DeleteItem", self._table):
            try:
                self._client.delete_item(
                    TableName=self._table,
                    Key=_key(LEASE),
                    ConditionExpression="#owner = :owner",
                    ExpressionAttributeNames={"#owner": "owner"},
                    ExpressionAttributeValues={":owner": {"S": owner}},
                )
            except ClientError as exc:
                if error_code(exc) != _CONDITION_FAILED:
                    raise


def _key(key: tuple[str, str]) -> dict[str, Any]:
    return {"pk": {"S": key[0]}, "sk": {"S": key[1]}}


def _record(item: Mapping[str, Any]) -> QuarantineRecord | None:
    """A record as written by ``record``; None (skipped) for anything else, which is never acted on."""
    try:
        attributes = {k: v["S"] for k, v in item["attributes"]["M"].items()}
        return QuarantineRecord(
            cloudmap_service_id=item["cloudmap_service_id"]["S"],
            instance_id=item["instance_id"]["S"],
            attributes=attributes,
            task_arn=item["task_arn"]["S"],
            cluster_arn=item["cluster_arn"]["S"],
            service_name=item["service_name"]["S"],
            reason=Reason(item["reason"]["S"]),
            rule=Rule(item["rule"]["S"]),
            since=float(item["since"]["N"]),
        )
    except (KeyError, ValueError, TypeError, AttributeError):
        return None
