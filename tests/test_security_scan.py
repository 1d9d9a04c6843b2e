"""Static security scan with checkov: the SAM template and its translation (what `make package` writes).

checkov lives in its own virtual environment (``.venv-scan``, made by ``make test``) because its
pins clash with the SAM CLI's. Every suppression sits next to its resource in template.yaml, as
``Metadata: checkov: skip`` with a comment that says why.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from devtools import package
from tests.test_template import ROOT, sam_template, translated

CHECKOV = Path(os.environ.get("CHECKOV", ROOT / ".venv-scan" / "bin" / "checkov"))


def checkov(path: Path) -> dict[str, Any]:
    if not CHECKOV.exists():
        pytest.fail(f"checkov not found at {CHECKOV}: run `make test` (it installs checkov into .venv-scan)")
    done = subprocess.run(
        [str(CHECKOV), "-f", str(path), "--framework", "cloudformation", "--output", "json", "--skip-download"],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
        env={**os.environ, "BC_SKIP_MAPPING": "TRUE"},
    )
    report: dict[str, Any] = json.loads(done.stdout)
    return report


@pytest.mark.parametrize("form", ["sam", "cloudformation"])
def test_template_passes_the_security_scan(form: str, tmp_path: Path) -> None:
    if form == "sam":
        path = ROOT / "template.yaml"
    else:
        # What `make package` writes for StackSets: the translation, as plain CloudFormation YAML.
        path = tmp_path / "cloudmap-reactor.cfn.yaml"
        package.write(translated(), path)
    report = checkov(path)
    failed = report["results"]["failed_checks"]
    assert not failed, [f"{c['check_id']} {c['resource']}: {c['check_name']}" for c in failed]
    assert report["summary"]["passed"] >= 10
    for skipped in report["results"]["skipped_checks"]:
        reason = skipped["check_result"].get("suppress_comment", "")
        assert len(reason) > 20, f"{skipped['check_id']} needs a reason"


def test_every_suppression_is_justified_in_the_template() -> None:
    skips = [
        (logical_id, skip)
        for logical_id, resource in sam_template()["Resources"].items()
        for skip in resource.get("Metadata", {}).get("checkov", {}).get("skip", [])
    ]
    assert skips
    for logical_id, skip in skips:
        assert skip["id"].startswith("CKV_"), logical_id
        assert len(skip["comment"]) > 40, f"{logical_id} {skip['id']}: say why"
