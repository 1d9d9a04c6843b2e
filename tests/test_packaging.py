"""The installable package: its metadata, and a `cloudmap-reactor` command that runs on what it declares.

`pip install .` into a clean environment would need the network; instead the console script of
this venv (installed by `make venv` through the real build backend) is run with every import
outside the standard library, the package and the closure of its declared dependencies refused,
as a clean install would refuse them. Optional imports (botocore's awscrt) then fail quietly, as
they would there.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from cloudmap_reactor import __version__

ROOT = Path(__file__).resolve().parent.parent
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
DECLARED = [Requirement(text) for text in PROJECT["dependencies"]]

# Installed as sitecustomize (imported at start-up, after the .pth files) in the command's process.
REFUSE_UNDECLARED = """
import json, os, sys

ALLOWED = frozenset(json.loads(os.environ["CLOUDMAP_REACTOR_ALLOWED_IMPORTS"]))


class RefuseUndeclared:
    def find_spec(self, fullname, path=None, target=None):
        top = fullname.partition(".")[0]
        if top in ALLOWED or top in sys.stdlib_module_names:
            return None
        raise ModuleNotFoundError(f"{top} is not a declared dependency of cloudmap-reactor", name=fullname)


sys.meta_path.insert(0, RefuseUndeclared())
"""


def pinned_runtime() -> dict[str, Requirement]:
    lines = (ROOT / "functions/requirements.txt").read_text(encoding="utf-8").splitlines()
    requirements = [Requirement(line) for line in (line.split("#")[0].strip() for line in lines) if line]
    return {canonicalize_name(r.name): r for r in requirements}


def dependency_closure(requirements: list[Requirement]) -> set[str]:
    """The distributions a plain (no extras) install of ``requirements`` brings, as installed here."""
    found: set[str] = set()
    pending = list(requirements)
    while pending:
        requirement = pending.pop()
        name = canonicalize_name(requirement.name)
        if name in found or (requirement.marker and not requirement.marker.evaluate({"extra": ""})):
            continue
        found.add(name)
        pending.extend(Requirement(text) for text in metadata.requires(name) or [])
    return found


def allowed_imports(distributions: set[str]) -> set[str]:
    return {
        module
        for module, owners in metadata.packages_distributions().items()
        if any(canonicalize_name(owner) in distributions for owner in owners)
    }


def test_declared_dependencies_admit_the_functions_pinned_versions() -> None:
    pinned = pinned_runtime()
    assert {canonicalize_name(r.name) for r in DECLARED} == {"boto3", "botocore"}
    for requirement in DECLARED:
        [version] = [spec.version for spec in pinned[canonicalize_name(requirement.name)].specifier]
        assert requirement.specifier.contains(version), f"{requirement} excludes {version} (functions/requirements.txt)"


def test_installed_metadata_is_what_pyproject_declares() -> None:
    try:
        distribution = metadata.distribution("cloudmap-reactor")
    except metadata.PackageNotFoundError:
        pytest.skip("cloudmap-reactor is not installed in this venv (make venv installs it)")
    assert distribution.version == __version__
    stale = "the installed metadata is older than pyproject.toml: run make venv"
    installed = [Requirement(text) for text in distribution.requires or []]
    assert {r.name: r for r in installed} == {r.name: r for r in DECLARED}, stale
    [script] = [e for e in distribution.entry_points if e.group == "console_scripts"]
    assert (script.name, script.value) == ("cloudmap-reactor", "cloudmap_reactor.cli:main")


@pytest.fixture(scope="module")
def command(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, str], Path]:
    """The console script, an environment that refuses undeclared imports, and a neutral directory."""
    beside = Path(sys.executable).parent / ("cloudmap-reactor.exe" if os.name == "nt" else "cloudmap-reactor")
    script = str(beside) if beside.exists() else shutil.which("cloudmap-reactor")
    if script is None:
        pytest.skip("the cloudmap-reactor command is not installed (make venv installs it)")
    site = tmp_path_factory.mktemp("site")
    (site / "sitecustomize.py").write_text(REFUSE_UNDECLARED, encoding="utf-8")
    allowed = allowed_imports(dependency_closure(DECLARED)) | {"cloudmap_reactor"}
    env = {
        **os.environ,
        "PYTHONPATH": str(site),
        "CLOUDMAP_REACTOR_ALLOWED_IMPORTS": json.dumps(sorted(allowed)),
        "COLUMNS": "200",
    }
    return script, env, tmp_path_factory.mktemp("cwd")


def run(command: tuple[str, dict[str, str], Path], *args: str) -> subprocess.CompletedProcess[str]:
    script, env, cwd = command
    return subprocess.run([script, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=60, check=False)


def test_undeclared_packages_are_refused_in_the_commands_environment(
    command: tuple[str, dict[str, str], Path],
) -> None:
    """The check below means something: the dev venv has Powertools, requests and moto."""
    _, env, cwd = command
    for module in ("aws_lambda_powertools", "requests", "devtools"):
        result = subprocess.run(
            [sys.executable, "-c", f"import {module}"], env=env, cwd=cwd, capture_output=True, text=True, check=False
        )
        assert "is not a declared dependency" in result.stderr, (module, result.stderr)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--version"], f"cloudmap-reactor {__version__}\n"),
        (["redrive", "--help"], "usage: cloudmap-reactor redrive "),
        (["doctor", "--help"], "usage: cloudmap-reactor doctor "),
        (["plan", "--help"], "usage: cloudmap-reactor plan "),
    ],
    ids=["version", "redrive-help", "doctor-help", "plan-help"],
)
def test_command_runs_on_the_declared_dependencies_alone(
    command: tuple[str, dict[str, str], Path], args: list[str], expected: str
) -> None:
    result = run(command, *args)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(expected)
    assert not result.stderr
