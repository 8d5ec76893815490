"""Packaging: a real wheel (with the embedded names) installed into a fresh virtual environment
trains and samples; and `pip install charmlp` keeps a user's torch that the ranges admit."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONSTRAINTS = ROOT / "constraints.txt"


def _env() -> dict[str, str]:
    """The environment without anything that would import charmlp from the source tree."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    return dict(env, OMP_NUM_THREADS="1", PIP_DISABLE_PIP_VERSION_CHECK="1")


def _run(cmd: list[str | Path], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    p = subprocess.run([str(c) for c in cmd], cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, f"{cmd} failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    return p


def _venv(path: Path) -> Path:
    """A fresh virtual environment (no system site-packages); returns its bin directory."""
    _run([sys.executable, "-m", "venv", path], cwd=path.parent)
    return path / "bin"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """charmlp's wheel, built from a copy of the project (the tree stays clean) without build
    isolation: the build backend is the running environment's setuptools, nothing is downloaded."""
    d = tmp_path_factory.mktemp("wheel")
    src = d / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "src", src / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", d / "dist", src], cwd=d)
    (whl,) = (d / "dist").glob("charmlp-*.whl")
    return whl


def test_wheel_contains_the_package_the_names_and_the_command(wheel):
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        assert "charmlp/datasets/names.txt" in names
        assert len(z.read("charmlp/datasets/names.txt").decode().split()) == 32033
        assert {"charmlp/cli.py", "charmlp/runs.py", "charmlp/train.py"} <= names
        info = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
        assert "charmlp = charmlp.cli:main" in z.read(info).decode()
        meta = z.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    requires = [line.split(":", 1)[1].strip() for line in meta.splitlines() if line.startswith("Requires-Dist:")]
    torch_req = next(r for r in requires if re.match(r"torch\b", r))
    assert "==" not in torch_req and "<3" in torch_req.replace(" ", ""), torch_req  # a range, not a pin
    assert not any(d.startswith("tests") or d.startswith("benchmarks") for d in names)


@pytest.mark.slow  # a fresh venv with torch: about a minute
def test_wheel_installs_into_a_fresh_venv_and_trains_and_samples(wheel, tmp_path):
    """Not editable, not the source tree: the wheel and its dependencies (the tested set of
    constraints.txt) in a new environment, run from a directory with no charmlp sources."""
    bin_ = _venv(tmp_path / "venv")
    _run([bin_ / "pip", "install", "-q", "--no-compile", "-c", CONSTRAINTS, wheel], cwd=tmp_path)
    where = _run([bin_ / "python", "-c", "import charmlp, torch; print(charmlp.__file__); print(torch.__version__)"],
                 cwd=tmp_path).stdout.split()
    assert where[0].startswith(str(tmp_path / "venv")) and where[1] == "2.13.0+cpu"
    out = tmp_path / "runs" / "quick"
    train = _run([bin_ / "charmlp", "train", "--preset", "quick", "--steps", "300", "--no-progress", "--out", out], cwd=tmp_path)
    assert "run saved to" in train.stdout
    sample = _run([bin_ / "charmlp", "sample", out, "-n", "5", "--json"], cwd=tmp_path)
    samples = json.loads(sample.stdout)["samples"]
    assert len(samples) == 5 and all(isinstance(s, str) and s for s in samples)
    assert json.loads((out / "config.json").read_text())["data"]["path"] is None  # the embedded names


# ----------------------------------------------------------------------------- an existing torch


def _stub_wheel(d: Path, name: str, version: str) -> Path:
    """A minimal wheel that installs a distribution `name==version` (an empty package)."""
    dist = f"{name}-{version}.dist-info"
    path = d / f"{name}-{version}-py3-none-any.whl"
    files = {
        f"{name}/__init__.py": f"__version__ = {version!r}\n",
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: charmlp-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    files[f"{dist}/RECORD"] = "".join(f"{f},,\n" for f in [*files, f"{dist}/RECORD"])
    with zipfile.ZipFile(path, "w") as z:
        for f, text in files.items():
            z.writestr(f, text)
    return path


def _lowest(spec: str) -> str:
    """The lower bound of a `name>=x,<y` requirement."""
    m = re.search(r">=\s*([\w.]+)", spec)
    assert m, spec
    return m.group(1)


@pytest.fixture(scope="module")
def stub_env(tmp_path_factory) -> Path:
    """A fresh venv holding stub distributions of charmlp's dependencies at their lowest supported versions."""
    d = tmp_path_factory.mktemp("stubs")
    bin_ = _venv(d / "venv")
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    wheels = []
    for spec in deps:
        name = re.match(r"[A-Za-z0-9_.-]+", spec).group(0)
        wheels.append(_stub_wheel(d, name, _lowest(spec)))
    _run([bin_ / "pip", "install", "-q", "--no-index", "--no-deps", *wheels], cwd=d)
    return bin_


def _dry_run(bin_: Path, wheel: Path, cwd: Path) -> subprocess.CompletedProcess:
    """What `pip install charmlp` would do here, offline (--no-index): it fails if it needs anything new."""
    return subprocess.run(
        [str(bin_ / "pip"), "install", "--dry-run", "--no-index", "--report", "-", "-q", str(wheel)],
        cwd=cwd, env=_env(), capture_output=True, text=True, timeout=300,
    )


@pytest.mark.parametrize("torch_version", ["lowest", "2.14.1"])
def test_pip_install_keeps_an_existing_supported_torch(stub_env, wheel, tmp_path, torch_version):
    """A user's torch of another supported version (a stub distribution standing in for it) is
    kept: the install would add charmlp only."""
    bin_ = stub_env
    if torch_version != "lowest":
        _run([bin_ / "pip", "install", "-q", "--no-index", "--no-deps", _stub_wheel(tmp_path, "torch", torch_version)], cwd=tmp_path)
    p = _dry_run(bin_, wheel, tmp_path)
    assert p.returncode == 0, p.stderr
    report = json.loads(p.stdout)
    assert [i["metadata"]["name"] for i in report["install"]] == ["charmlp"]


def test_pip_install_replaces_an_unsupported_torch(tmp_path, wheel, stub_env):
    """The control: a torch below the range is not accepted (offline, pip then finds nothing to install)."""
    bin_ = _venv(tmp_path / "venv")
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    stubs = [_stub_wheel(tmp_path, re.match(r"[A-Za-z0-9_.-]+", s).group(0), _lowest(s)) for s in deps if not s.startswith("torch")]
    _run([bin_ / "pip", "install", "-q", "--no-index", "--no-deps", *stubs, _stub_wheel(tmp_path, "torch", "1.13.1")], cwd=tmp_path)
    p = _dry_run(bin_, wheel, tmp_path)
    assert p.returncode != 0 and "torch" in p.stderr
