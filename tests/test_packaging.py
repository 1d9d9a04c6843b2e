"""The installable package: its metadata, and a `cloudmap-reactor` command that runs on what it declares.

SLOW (about 10-20 s, once per run, bounded by timeouts): ``clean_install`` does what a user's
``pip install .`` does, offline. It builds the wheel with the project's real build backend
(setuptools, from this venv: ``--no-build-isolation``), repacks each installed distribution that
the declared dependencies bring (their files and metadata, as wheels; no network, no index) into a
wheelhouse, creates an empty venv (no pip, no site packages) and lets pip resolve and install
``cloudmap-reactor`` into it from that wheelhouse alone. A module the command imports without
declaring it (Powertools, requests, moto: all in this venv) is then missing, as it would be for
the user.
"""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import subprocess
import sys
import tomllib
import venv
import zipfile
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from cloudmap_reactor import __version__

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
PROJECT = PYPROJECT["project"]
DECLARED = [Requirement(text) for text in PROJECT["dependencies"]]
# pip writes these itself on install; a wheel does not carry them.
INSTALL_RECORDS = {"INSTALLER", "RECORD", "REQUESTED", "direct_url.json"}
STEP_TIMEOUT = 120  # seconds for each pip step on a slow CI machine; they take a few


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


def repack(name: str, wheelhouse: Path) -> None:
    """An installed distribution as a wheel again: its files and metadata, without bytecode."""
    dist = metadata.distribution(name)
    files = [f for f in dist.files or [] if "__pycache__" not in f.parts and f.parts[0] != ".."]
    info = next(f.parts[0] for f in files if f.parts[0].endswith(".dist-info"))
    wheel_text = (Path(str(dist.locate_file(info))) / "WHEEL").read_text(encoding="utf-8")
    tags = [line.split(":", 1)[1].strip() for line in wheel_text.splitlines() if line.startswith("Tag:")]
    tag = next((t for t in tags if t.startswith("py3")), tags[0])  # py2-none-any, py3-none-any: the py3 one
    stem = info.removesuffix(".dist-info")
    record = []
    with zipfile.ZipFile(wheelhouse / f"{stem}-{tag}.whl", "w", zipfile.ZIP_STORED) as wheel:
        for file in files:
            if file.parts[0] == info and file.name in INSTALL_RECORDS:
                continue
            data = Path(str(dist.locate_file(file))).read_bytes()
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            wheel.writestr(file.as_posix(), data)
            record.append(f"{file.as_posix()},sha256={digest},{len(data)}")
        wheel.writestr(f"{info}/RECORD", "\n".join([*record, f"{info}/RECORD,,", ""]))


def build_wheel(wheelhouse: Path, source: Path) -> None:
    """The project's wheel, built by its own backend from a copy of what the build reads."""
    for name in ("pyproject.toml", "README.md", *(p.name for p in ROOT.glob("LICENSE*"))):
        shutil.copy2(ROOT / name, source / name)
    shutil.copytree(
        ROOT / "functions", source / "functions", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info")
    )
    pip = [sys.executable, "-m", "pip", "--isolated", "--disable-pip-version-check"]
    subprocess.run(
        [
            *pip,
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "-w",
            str(wheelhouse),
            str(source),
        ],
        check=True,
        capture_output=True,
        timeout=STEP_TIMEOUT,
    )


@pytest.fixture(scope="module")
def command(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, str], Path]:
    """``cloudmap-reactor`` pip-installed into a clean venv from a local wheelhouse, and a neutral directory."""
    for requirement in map(Requirement, PYPROJECT["build-system"]["requires"]):  # built without isolation
        backend = metadata.version(requirement.name)
        assert requirement.specifier.contains(backend), f"{requirement.name} {backend} here: run make venv"
    wheelhouse = tmp_path_factory.mktemp("wheelhouse")
    build_wheel(wheelhouse, tmp_path_factory.mktemp("source"))
    for name in dependency_closure(DECLARED):
        repack(name, wheelhouse)
    target = tmp_path_factory.mktemp("clean-venv")
    venv.EnvBuilder(with_pip=False, clear=True).create(target)
    bin_dir = target / ("Scripts" if os.name == "nt" else "bin")
    python = bin_dir / ("python.exe" if os.name == "nt" else "python")
    install = [sys.executable, "-m", "pip", "--isolated", "--disable-pip-version-check", "--python", str(python)]
    installed = subprocess.run(
        [
            *install,
            "install",
            "--quiet",
            "--no-index",
            "--no-compile",
            "--find-links",
            str(wheelhouse),
            "cloudmap-reactor",
        ],
        capture_output=True,
        text=True,
        timeout=STEP_TIMEOUT,
        check=False,
    )
    assert installed.returncode == 0, installed.stderr
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env["COLUMNS"] = "200"
    return str(bin_dir / "cloudmap-reactor"), env, tmp_path_factory.mktemp("cwd")


def run(command: tuple[str, dict[str, str], Path], *args: str) -> subprocess.CompletedProcess[str]:
    script, env, cwd = command
    return subprocess.run([script, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=60, check=False)


def test_the_clean_venv_has_nothing_undeclared(command: tuple[str, dict[str, str], Path]) -> None:
    """The check below means something: this venv has Powertools, requests and moto; the clean one must not."""
    script, env, cwd = command
    python = str(Path(script).with_name(Path(sys.executable).name))
    for module in ("aws_lambda_powertools", "requests", "moto", "devtools"):
        result = subprocess.run(
            [python, "-c", f"import {module}"], env=env, cwd=cwd, capture_output=True, text=True, check=False
        )
        assert "ModuleNotFoundError" in result.stderr, (module, result.stderr)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--version"], f"cloudmap-reactor {__version__}\n"),
        (["doctor", "--help"], "usage: cloudmap-reactor doctor "),
        (["plan", "--help"], "usage: cloudmap-reactor plan "),
        (["status", "--help"], "usage: cloudmap-reactor status "),
        (["undo", "--help"], "usage: cloudmap-reactor undo "),
        (["redrive", "--help"], "usage: cloudmap-reactor redrive "),
    ],
    ids=["version", "doctor-help", "plan-help", "status-help", "undo-help", "redrive-help"],
)
def test_pip_installed_command_runs_on_the_declared_dependencies_alone(
    command: tuple[str, dict[str, str], Path], args: list[str], expected: str
) -> None:
    result = run(command, *args)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(expected)
    assert not result.stderr


def test_pip_installed_command_runs_a_command_until_it_needs_aws(command: tuple[str, dict[str, str], Path]) -> None:
    """Past the imports: parsing, the region, the session and the clients, to the first call (no credentials)."""
    script, env, cwd = command
    isolated = {k: v for k, v in env.items() if not k.startswith("AWS_")}
    isolated.update(
        AWS_CONFIG_FILE=str(cwd / "none"),
        AWS_SHARED_CREDENTIALS_FILE=str(cwd / "none"),
        AWS_EC2_METADATA_DISABLED="true",
    )
    result = run((script, isolated, cwd), "doctor", "--region", "eu-west-1")
    assert result.returncode == 2, result.stderr
    assert result.stderr == "cloudmap-reactor doctor: Unable to locate credentials\n"
    result = run((script, isolated, cwd), "status", "--stack", "x")
    assert result.returncode == 2
    assert "no AWS region: give --region, or set AWS_REGION or AWS_DEFAULT_REGION" in result.stderr
