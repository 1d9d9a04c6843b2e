"""The quarantine ledger's DynamoDB table, created in the local emulator exactly as template.yaml declares it.

Tests, the demo and the bench create it from the template's own ``LedgerTable`` resource (keys,
attribute definitions, billing mode, TTL attribute), so a change to the table in the template is
what they run against. (Encryption and point-in-time recovery are not modelled by moto and change
nothing for the code.)
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from samtranslator.yaml_helper import yaml_parse

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

TEMPLATE = Path(__file__).resolve().parent.parent / "template.yaml"
TABLE_NAME = "cloudmap-reactor-ledger"


@cache
def ledger_table_properties() -> dict[str, Any]:
    """The ``LedgerTable`` resource's properties in template.yaml."""
    template: dict[str, Any] = yaml_parse(TEMPLATE.read_text(encoding="utf-8"))
    properties: dict[str, Any] = template["Resources"]["LedgerTable"]["Properties"]
    return properties


def create_ledger_table(client: DynamoDBClient, name: str = TABLE_NAME) -> str:
    """Create the table (and its TTL) in the emulator; return its name."""
    spec = ledger_table_properties()
    client.create_table(
        TableName=name,
        KeySchema=spec["KeySchema"],
        AttributeDefinitions=spec["AttributeDefinitions"],
        BillingMode=spec["BillingMode"],
    )
    ttl = spec.get("TimeToLiveSpecification")
    if ttl:
        client.update_time_to_live(
            TableName=name, TimeToLiveSpecification={"AttributeName": ttl["AttributeName"], "Enabled": ttl["Enabled"]}
        )
    return name
