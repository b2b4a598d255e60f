"""How restyle installs beside other software: compatible ranges in pyproject.toml, the exact
set CI tests in scripts/constraints.txt, the extras, type information, and a version that names
the commit it was built from (never a generated file in git, never a fixed "0.1.0")."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def pinned() -> dict[str, str]:
    lines = (REPO / "scripts" / "constraints.txt").read_text().splitlines()
    pairs = (ln.split("==", 1) for ln in lines if ln.strip() and not ln.startswith("#"))
    return {canonicalize_name(name.split("[")[0]): version.strip() for name, version in pairs}


def requirements(*extras: str) -> list[Requirement]:
    groups = [PROJECT["dependencies"], *(PROJECT["optional-dependencies"][e] for e in extras)]
    return [Requirement(line) for group in groups for line in group]


def test_install_requirements_are_ranges_that_the_constraints_file_satisfies():
    for requirement in requirements(*PROJECT["optional-dependencies"]):
        operators = {spec.operator for spec in requirement.specifier}
        assert "==" not in operators and "<" in operators, f"{requirement}: give a range"
    versions = pinned()
    for requirement in requirements("test", "dev"):  # what CI installs (scripts/install.sh)
        name = canonicalize_name(requirement.name)
        assert name in versions, f"{name} is missing from scripts/constraints.txt"
        assert requirement.specifier.contains(versions[name], prereleases=True), (
            f"constraints.txt pins {name}=={versions[name]}, outside {requirement.specifier}"
        )


def test_extras_for_gpu_machines_tests_and_the_guardrails_exist_and_types_ship():
    assert {"gpu", "test", "dev"} <= set(PROJECT["optional-dependencies"])
    assert (REPO / "pipeline" / "py.typed").is_file()
    package_data = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert "py.typed" in package_data["package-data"]["*"]


@pytest.mark.skipif(not (REPO / ".git").exists(), reason="not a git checkout")
def test_the_generated_version_file_is_not_in_git():
    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True)

    assert git("ls-files", "pipeline/_version.py").stdout == ""
    assert git("check-ignore", "-q", "pipeline/_version.py").returncode == 0


def test_the_version_names_the_commit_and_a_tree_never_built_still_imports():
    from pipeline.config import code_version

    version = code_version()
    assert re.fullmatch(r"restyle \S+( \(git [0-9a-f]{10}(-dirty)?\))?", version), version
    if (REPO / ".git").exists():  # a checkout: the commit checked out now is named
        head = subprocess.run(
            ["git", "rev-parse", "--short=10", "HEAD"], cwd=REPO, capture_output=True, text=True
        ).stdout.strip()
        assert f"(git {head}" in version
    else:  # an installed wheel: its version was built from git metadata (+g<commit>)
        assert "+g" in version
    never_built = (  # no pipeline/_version.py (a source tree nobody installed)
        "import importlib.abc, sys\n"
        "class NoVersionFile(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name == 'pipeline._version':\n"
        "            raise ModuleNotFoundError(name)\n"
        "sys.meta_path.insert(0, NoVersionFile())\n"
        "import pipeline\n"
        "print(pipeline.__version__)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", never_built], capture_output=True, text=True, timeout=60
    )
    assert (result.returncode, result.stdout.strip()) == (0, "0.1.0"), result.stderr


def test_the_kuberay_image_is_built_from_a_wheel_of_this_repository():
    dockerfile = (REPO / "jobs" / "kuberay" / "Dockerfile").read_text()
    assert "restyle-*.whl" in dockerfile and "python -m pip wheel" in dockerfile
    for path in (REPO / "jobs").rglob("*"):  # restyle is on no index: no `pip install restyle==`
        if path.is_file() and path.suffix in {".yaml", ".md", ""}:
            assert "pip install restyle" not in path.read_text(), path
