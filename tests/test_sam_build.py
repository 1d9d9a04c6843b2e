"""`sam build` as a developer runs it: no Docker, no python3.13, only this venv's Python.

The build downloads the Lambda (arm64, CPython 3.13) wheels of functions/requirements.txt
from PyPI into the dependencies layer (about 20 MB, some 20 s), so it needs the network.
It builds into a temporary directory, from scratch (--no-cached), and checks what would be
uploaded: the package alone in each function, the third-party packages for the right
platform in the layer.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from samtranslator.yaml_helper import yaml_parse

ROOT = Path(__file__).resolve().parent.parent
FUNCTIONS = ("TaskStateReactorFunction", "HealthPollerFunction")
HANDLER_MODULES = ("handlers/task_state_change.py", "handlers/health_poller.py")
LAYER_PACKAGES = ("aws_lambda_powertools", "aws_xray_sdk", "wrapt", "requests", "boto3", "botocore")
ELF_MACHINE_AARCH64 = 183


def sam_executable() -> str | None:
    """The sam installed next to this Python (the project venv), else one on PATH."""
    beside = Path(sys.executable).parent / ("sam.exe" if os.name == "nt" else "sam")
    return str(beside) if beside.exists() else shutil.which("sam")


@pytest.fixture(scope="module")
def build_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    sam = sam_executable()
    if sam is None:
        pytest.skip("the sam CLI is not installed (pip install -r requirements-dev.txt)")
    build_dir = tmp_path_factory.mktemp("sam") / "build"
    env = {
        **os.environ,
        "SAM_CLI_TELEMETRY": "0",
        # The makefiles run pip with $(PYTHON): this venv's Python, whatever is on PATH.
        "PYTHON": sys.executable,
    }
    result = subprocess.run(
        [sam, "build", "--template-file", str(ROOT / "template.yaml"), "--build-dir", str(build_dir), "--no-cached"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-5000:]
    return build_dir


@pytest.mark.parametrize("function", FUNCTIONS)
def test_function_artifact_is_the_package_alone(build_dir: Path, function: str) -> None:
    artifact = build_dir / function
    assert sorted(p.name for p in artifact.iterdir()) == ["cloudmap_reactor"]
    package = artifact / "cloudmap_reactor"
    assert (package / "__init__.py").is_file()
    for module in HANDLER_MODULES:
        assert (package / module).is_file(), module
    sources = {p.relative_to(ROOT / "functions") for p in (ROOT / "functions/cloudmap_reactor").rglob("*.py")}
    built = {p.relative_to(artifact) for p in package.rglob("*.py")}
    assert built == {s for s in sources if "tests" not in s.parts and not s.name.startswith("test_")}
    assert not [p for p in artifact.rglob("*") if p.name == "__pycache__" or p.suffix in {".pyc", ".pyo"}]


def test_layer_has_the_dependencies_for_arm64_python313(build_dir: Path) -> None:
    python = build_dir / "DependenciesLayer" / "python"
    assert python.is_dir()
    for package in LAYER_PACKAGES:
        assert (python / package / "__init__.py").is_file(), package
    assert not (python / "bin").exists()
    extensions = list(python.rglob("*.so"))
    assert any(p.parent.name == "wrapt" for p in extensions)  # aws-xray-sdk's compiled dependency
    for extension in extensions:
        assert extension.name.endswith(".cpython-313-aarch64-linux-gnu.so") or ".abi3." in extension.name, extension
        header = extension.read_bytes()[:20]
        assert header[:4] == b"\x7fELF"
        (machine,) = struct.unpack_from("<H", header, 18)
        assert machine == ELF_MACHINE_AARCH64, f"{extension} is not an arm64 binary"
    # pip ran with --no-compile: no bytecode of the build machine's Python in the layer.
    assert not list(python.rglob("__pycache__"))


def test_built_template_points_at_the_artifacts(build_dir: Path) -> None:
    built = yaml_parse((build_dir / "template.yaml").read_text(encoding="utf-8"))
    resources = built["Resources"]
    for function in FUNCTIONS:
        assert resources[function]["Properties"]["CodeUri"] == function
    assert resources["DependenciesLayer"]["Properties"]["ContentUri"] == "DependenciesLayer"
