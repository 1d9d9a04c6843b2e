"""Translate the SAM template into plain CloudFormation (no Transform), for service-managed StackSets.

Service-managed StackSets cannot deploy templates with transforms, so the SAM transform is run here,
offline, with the same translator CloudFormation runs (aws-sam-translator). Its input is
``template.yaml`` or, for a deployable result, the output of ``sam package`` (whose CodeUri and
ContentUri point at the uploaded artefacts in S3). Local code paths, which the translator cannot
take, become placeholders under ``s3://replace-with-your-artifact-bucket/``, and the command says so:
such a template is for review and linting, not for deploying.

    python -m devtools.package [--template PATH] [--output PATH] [--region REGION]

The translation bakes in the partition of ``--region`` (managed policy ARNs): package once per
partition (aws, aws-cn, aws-us-gov). Nothing else in the output depends on the region or account.
"""

from __future__ import annotations

import argparse
import copy
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import boto3
import yaml
from samtranslator.parser.parser import Parser
from samtranslator.translator.translator import Translator
from samtranslator.yaml_helper import yaml_parse

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / "template.yaml"
OUTPUT = ROOT / "build" / "packaged" / "cloudmap-reactor.cfn.yaml"
# A valid bucket name (cfn-lint checks the pattern) that says what it is.
PLACEHOLDER_BUCKET = "replace-with-your-artifact-bucket"
CODE_KEYS = ("CodeUri", "ContentUri")

Json = Any


def load(path: Path) -> dict[str, Json]:
    parsed: dict[str, Json] = yaml_parse(path.read_text(encoding="utf-8"))
    return parsed


def local_code_paths(template: Mapping[str, Json]) -> list[str]:
    """Where the template points at code on this machine rather than in S3 (``sam package`` not run)."""
    found = []
    globals_function = template.get("Globals", {}).get("Function", {})
    functions = [r for r in template["Resources"].values() if r.get("Type") == "AWS::Serverless::Function"]
    inherits = any("CodeUri" not in r.get("Properties", {}) for r in functions)
    if (
        inherits
        and isinstance(globals_function.get("CodeUri"), str)
        and not globals_function["CodeUri"].startswith("s3://")
    ):
        found.append("Globals.Function.CodeUri")
    for logical_id, resource in template["Resources"].items():
        properties = resource.get("Properties", {})
        found += [
            f"{logical_id}.{key}"
            for key in CODE_KEYS
            if isinstance(properties.get(key), str) and not properties[key].startswith("s3://")
        ]
    return found


def with_placeholder_code(template: Mapping[str, Json]) -> dict[str, Json]:
    """A copy whose local code paths point at placeholder S3 objects (the translator takes S3 only)."""
    copied = copy.deepcopy(dict(template))
    globals_function = copied.get("Globals", {}).get("Function", {})
    if isinstance(globals_function.get("CodeUri"), str) and not globals_function["CodeUri"].startswith("s3://"):
        globals_function["CodeUri"] = f"s3://{PLACEHOLDER_BUCKET}/functions.zip"
    for logical_id, resource in copied["Resources"].items():
        properties = resource.get("Properties", {})
        for key in CODE_KEYS:
            if isinstance(properties.get(key), str) and not properties[key].startswith("s3://"):
                properties[key] = f"s3://{PLACEHOLDER_BUCKET}/{logical_id}.zip"
    return copied


def translate(
    template: Mapping[str, Json], parameter_values: Mapping[str, str] | None = None, region: str = "us-east-1"
) -> dict[str, Json]:
    """The CloudFormation the SAM transform makes of ``template`` (local code paths as placeholders)."""

    def no_managed_policy_names() -> dict[str, str]:
        raise AssertionError("the template must name managed policies by ARN (no IAM look-up offline)")

    translator = Translator(None, Parser(), boto_session=boto3.session.Session(region_name=region))
    translated: dict[str, Json] = translator.translate(
        with_placeholder_code(template),
        parameter_values=dict(parameter_values or {}),
        get_managed_policy_map=no_managed_policy_names,
    )
    return translated


class _NoAliases(yaml.SafeDumper):  # type: ignore[misc]
    """CloudFormation rejects YAML aliases, which PyYAML writes for objects the translator shares."""

    def ignore_aliases(self, data: Json) -> bool:
        return True


def write(translated: Mapping[str, Json], output: Path) -> None:
    output.parent.mkdir(parents=True, exist_ok=True)
    header = "# Written by `make package` (devtools/package.py): plain CloudFormation, no Transform.\n"
    body = yaml.dump(dict(translated), Dumper=_NoAliases, sort_keys=False, width=120)
    output.write_text(header + body, encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--template", type=Path, default=TEMPLATE, help="template.yaml or sam package's output")
    parser.add_argument("--output", type=Path, default=OUTPUT, help=f"default {OUTPUT.relative_to(ROOT)}")
    parser.add_argument("--region", default="us-east-1", help="any region of the target partition (default us-east-1)")
    args = parser.parse_args(argv)
    template = load(args.template)
    placeholders = local_code_paths(template)
    translated = translate(template, region=args.region)
    if "Transform" in translated:
        parser.error("the translation left a Transform")
    write(translated, args.output)
    print(f"wrote {args.output} ({len(translated['Resources'])} resources, no Transform)")
    if placeholders:
        print(
            f"note: {', '.join(placeholders)} point at local code, written as placeholders under "
            f"s3://{PLACEHOLDER_BUCKET}/ "
            "(lint and review only). For a deployable template: sam build && sam package --s3-bucket BUCKET "
            "--output-template-file build/packaged/sam.yaml, then make package FROM=build/packaged/sam.yaml",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
