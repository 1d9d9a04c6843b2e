"""What the quarantine ledger costs a pass in DynamoDB calls (``make bench`` reports the same, measured).

A steady pass with nothing quarantined reads the ledger once (one ``Query``) and renews the lease
once (one conditional ``PutItem``); leaving and returning add one write each.
"""

from __future__ import annotations

import time

from cloudmap_reactor import wiring
from cloudmap_reactor.adapters.clients import dynamodb_client
from devtools.aws_emulator import FleetBuilder
from tests.conftest import count_calls


def test_a_steady_pass_costs_one_query_and_the_lease_and_leaving_and_returning_one_write_each(
    aws: FleetBuilder,
) -> None:
    aws.create_cluster("prod")
    service = aws.create_service("prod", "orders", discovery_names=["orders", "orders-grpc"])
    arns = aws.start_tasks(service, 4)
    for arn in arns:
        aws.set_health(arn, "HEALTHY")
    calls = count_calls(dynamodb_client())
    scanner = wiring.poller_deps().new_scanner(owner="invocation-1")

    def one_pass() -> dict[str, int]:
        calls.reset()
        scanner.run_pass(deadline=time.monotonic() + 60)
        return dict(calls.counts)

    assert one_pass() == {"PutItem": 1, "Query": 1}  # the lease, the quarantine records
    assert one_pass() == {"PutItem": 1, "Query": 1}

    aws.set_health(arns[0], "UNHEALTHY")
    assert one_pass() == {"PutItem": 1 + 2, "Query": 1}  # a record per Cloud Map service, before deregistering
    assert one_pass() == {"PutItem": 1, "Query": 1}  # quarantined: nothing more

    aws.set_health(arns[0], "HEALTHY")
    assert one_pass() == {"PutItem": 1, "Query": 1, "DeleteItem": 2}  # each record deleted, then registered
    assert one_pass() == {"PutItem": 1, "Query": 1}
    scanner.release_lease()
