"""Distribution: the console's parameter groups, SAR metadata, version, boundary and tags, the StackSets template.

Everything here walks lists (the template's parameters, the translated resources, cfn-lint's
resource schemas) rather than naming what exists today, so a parameter, role or taggable resource
added later without its label, boundary or tag fails here.
"""

from __future__ import annotations

import re
import tomllib
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from cfnlint.api import lint_file  # type: ignore[import-untyped]
from cfnlint.config import ManualArgs  # type: ignore[import-untyped]
from cfnlint.schema import PROVIDER_SCHEMA_MANAGER  # type: ignore[import-untyped]
from samtranslator.yaml_helper import yaml_parse

from cloudmap_reactor import __version__
from devtools import package
from tests.test_template import REGION, ROOT, RULE, STACK, Stack, sam_template, translated

Json = Any

BOUNDARY = "arn:aws:iam::123456789012:policy/platform-boundary"
TAG_KEY = "cloudmap-reactor:cost-allocation"
# Every optional resource on, so that conditional roles and resources are walked too.
EVERYTHING = {
    "ReadinessEvents": "true",
    "ProbeSubnetIds": "subnet-1",
    "ProbeSecurityGroupIds": "sg-1",
    "AlarmEmail": "oncall@example.com",
    "PollerReservedConcurrency": "1",
    "ReplaceAfterSeconds": "600",
    "DnsNamespaces": "true",
    "RedeployStaleClients": "true",
}
# What SAM generates and cannot tag: the rule of an EventBridgeRule event (samtranslator's
# AWS::Events::Rule has no Tags). Stack tags (sam deploy --tags) still reach it.
UNTAGGABLE_BY_SAM = {RULE}


def interface() -> dict[str, Json]:
    metadata: dict[str, Json] = sam_template()["Metadata"]["AWS::CloudFormation::Interface"]
    return metadata


# -- the console ------------------------------------------------------------------------------


def test_every_parameter_is_in_exactly_one_console_group_and_has_a_label() -> None:
    parameters = set(sam_template()["Parameters"])
    grouped = Counter(name for group in interface()["ParameterGroups"] for name in group["Parameters"])
    assert {name for name, count in grouped.items() if count > 1} == set(), "in more than one group"
    assert parameters - set(grouped) == set(), "in no group of Metadata AWS::CloudFormation::Interface"
    assert set(grouped) - parameters == set(), "groups name parameters the template does not have"
    labels = interface()["ParameterLabels"]
    assert parameters - set(labels) == set(), "without a label"
    assert set(labels) - parameters == set(), "labels of parameters the template does not have"
    for name, label in labels.items():
        assert 3 <= len(label["default"]) <= 80, name
    for group in interface()["ParameterGroups"]:
        assert group["Label"]["default"], group


def test_the_dry_run_comes_first_in_the_console() -> None:
    assert interface()["ParameterGroups"][0]["Parameters"][0] == "DryRun"


# -- Serverless Application Repository, version, licence --------------------------------------


def test_serverless_repo_metadata_is_complete_and_versioned_like_the_package() -> None:
    sar = sam_template()["Metadata"]["AWS::ServerlessRepo::Application"]
    assert sar["Name"] == "cloudmap-reactor"
    assert sar["SemanticVersion"] == __version__
    assert re.fullmatch(r"\d+\.\d+\.\d+", __version__)
    assert sar["SpdxLicenseId"] == "Apache-2.0"
    assert (ROOT / sar["LicenseUrl"]).read_text(encoding="utf-8").lstrip().startswith("Apache License")
    assert (ROOT / sar["ReadmeUrl"]).is_file()
    assert sar["Author"]
    assert sar["Description"]
    assert sar["Labels"]
    assert all(re.fullmatch(r"[a-zA-Z0-9+\-_:/@]{1,127}", label) for label in sar["Labels"])
    # Not a real repository yet: a placeholder that says so (see the README, Distribution).
    assert "REPLACE" in sar["SourceCodeUrl"]


def test_the_changelog_has_a_section_for_this_version() -> None:
    changelog = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    assert re.search(rf"^## \[{re.escape(__version__)}\] - \d{{4}}-\d{{2}}-\d{{2}}$", changelog, re.MULTILINE)
    assert "semantic versioning" in changelog.lower()


# -- safe first deploy -------------------------------------------------------------------------


def test_samconfig_names_no_region_and_deploys_in_dry_run() -> None:
    config = tomllib.loads((ROOT / "samconfig.toml").read_text(encoding="utf-8"))
    for command in config["default"].values():
        assert "region" not in command["parameters"]
    assert "DryRun=true" in config["default"]["deploy"]["parameters"]["parameter_overrides"]
    # sam validate's own checks want a region even offline: make validate gives one.
    validate = next(line for line in (ROOT / "Makefile").read_text().splitlines() if "/sam validate" in line)
    assert "--region" in validate


# -- permissions boundary ----------------------------------------------------------------------


def roles(template: dict[str, Json]) -> dict[str, Json]:
    return {k: r for k, r in template["Resources"].items() if r["Type"] == "AWS::IAM::Role"}


def test_every_role_takes_the_permissions_boundary_under_its_condition() -> None:
    found = roles(translated(EVERYTHING))
    assert len(found) >= 3  # the reactor's, the poller's, the scheduler's
    for logical_id, role in found.items():
        assert role["Properties"].get("PermissionsBoundary") == {
            "Fn::If": ["HasPermissionsBoundary", {"Ref": "PermissionsBoundary"}, {"Ref": "AWS::NoValue"}]
        }, logical_id


@pytest.mark.parametrize(("boundary", "expected"), [("", None), (BOUNDARY, BOUNDARY)])
def test_roles_as_deployed_have_the_boundary_only_when_given(boundary: str, expected: str | None) -> None:
    stack = Stack({**EVERYTHING, "PermissionsBoundary": boundary})
    for logical_id, role in stack.of_type("AWS::IAM::Role").items():
        assert role["Properties"].get("PermissionsBoundary") == expected, logical_id


@pytest.mark.parametrize(
    ("value", "accepted"),
    [
        ("", True),
        (BOUNDARY, True),
        ("arn:aws-us-gov:iam::123456789012:policy/path/to/Boundary+1", True),
        ("arn:aws:iam::aws:policy/PowerUserAccess", True),  # AWS managed policies may be boundaries too
        ("arn:aws:iam::12345:policy/short-account", False),
        ("platform-boundary", False),
        ("arn:aws:iam::123456789012:role/x", False),
    ],
)
def test_permissions_boundary_pattern(value: str, accepted: bool) -> None:
    pattern = sam_template()["Parameters"]["PermissionsBoundary"]["AllowedPattern"]
    assert (re.fullmatch(pattern, value) is not None) is accepted


# -- tags --------------------------------------------------------------------------------------


def taggable(resource_type: str) -> bool:
    """Whether CloudFormation can tag this resource type, from cfn-lint's copy of the resource schemas."""
    schema = PROVIDER_SCHEMA_MANAGER.get_resource_schema(REGION, resource_type).schema
    return "Tags" in schema.get("properties", {}) and schema.get("tagging", {}).get("taggable", True) is not False


def test_every_resource_that_takes_tags_carries_the_cost_allocation_tag() -> None:
    resources = translated(EVERYTHING)["Resources"]
    tagged = {k for k, r in resources.items() if taggable(r["Type"])}
    assert {"LedgerTable", "DeadLetterQueue", "AlarmTopic", "HealthPollerRole"} <= tagged  # the walk finds them
    for logical_id in sorted(tagged - UNTAGGABLE_BY_SAM):
        keys = [tag["Key"] for tag in resources[logical_id]["Properties"].get("Tags", [])]
        assert TAG_KEY in keys, f"{logical_id} ({resources[logical_id]['Type']}) lacks the tag {TAG_KEY}"
    assert tagged >= UNTAGGABLE_BY_SAM  # still true, or the exception can go


@pytest.mark.parametrize(("value", "expected"), [("", STACK), ("team-payments/42", "team-payments/42")])
def test_the_tag_is_the_parameter_or_the_stack_name(value: str, expected: str) -> None:
    stack = Stack({**EVERYTHING, "CostAllocationTag": value})
    for logical_id, resource in stack.resources.items():
        tags = {t["Key"]: t["Value"] for t in resource.get("Properties", {}).get("Tags", [])}
        if TAG_KEY in tags:
            assert tags[TAG_KEY] == expected, logical_id


# -- the StackSets template (make package) -----------------------------------------------------


@pytest.fixture(scope="module")
def packaged(tmp_path_factory: pytest.TempPathFactory) -> Path:
    output = tmp_path_factory.mktemp("packaged") / "cloudmap-reactor.cfn.yaml"
    assert package.main(["--output", str(output)]) == 0
    return output


def test_packaged_template_is_plain_cloudformation(packaged: Path) -> None:
    text = packaged.read_text(encoding="utf-8")
    template = yaml_parse(text)
    assert "Transform" not in template
    assert not [t for t in {r["Type"] for r in template["Resources"].values()} if t.startswith("AWS::Serverless::")]
    assert "&id" not in text
    assert "*id" not in text
    assert set(template["Parameters"]) == set(sam_template()["Parameters"])
    code = [r["Properties"]["Code"] for r in template["Resources"].values() if r["Type"] == "AWS::Lambda::Function"]
    assert code
    assert all(c["S3Bucket"] == package.PLACEHOLDER_BUCKET for c in code)


def test_packaged_template_passes_cfn_lint(packaged: Path) -> None:
    matches = lint_file(packaged, ManualArgs(regions=[REGION]))
    assert not matches, [str(m) for m in matches]


def test_a_sam_packaged_template_keeps_its_s3_artefacts(tmp_path: Path) -> None:
    """The production path: `sam package` output (CodeUri/ContentUri in S3) translates with them."""
    text = (ROOT / "template.yaml").read_text(encoding="utf-8")
    text = text.replace("    CodeUri: functions/\n", "    CodeUri: s3://artefacts-eu-west-1/abc123\n", 1)
    text = text.replace("      ContentUri: layer/\n", "      ContentUri: s3://artefacts-eu-west-1/def456\n", 1)
    sam_packaged = tmp_path / "sam.yaml"
    sam_packaged.write_text(text, encoding="utf-8")
    assert package.local_code_paths(package.load(sam_packaged)) == []
    output = tmp_path / "out.yaml"
    assert package.main(["--template", str(sam_packaged), "--output", str(output)]) == 0
    resources = yaml_parse(output.read_text(encoding="utf-8"))["Resources"]
    buckets = {
        (r["Properties"].get("Code") or r["Properties"].get("Content"))["S3Bucket"]
        for r in resources.values()
        if r["Type"] in {"AWS::Lambda::Function", "AWS::Lambda::LayerVersion"}
    }
    assert buckets == {"artefacts-eu-west-1"}
