"""What the package declares is what its code needs: every distribution HakuRiver's modules
import is a declared dependency, every declared dependency is imported by them (test-only
ones belong in the ``dev`` extra), the runtime floors admit no release the committed stubs
refuse, constraints.txt pins a version of every requirement that the requirement allows, the
version the tools print is the package's, and every command that prints a result takes
--json."""

from __future__ import annotations

import ast
import functools
import importlib.metadata
import inspect
import re
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

import hakuriver_common
from hakuriver_common.commands import App, Command

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("hakuriver_host", "hakuriver_runner", "hakuriver_cli", "hakuriver_common")


def _project() -> dict[str, object]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]  # type: ignore[no-any-return]


def _name(requirement: str) -> str:
    """A requirement's distribution name, normalized (PEP 503)."""
    found = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", requirement)
    assert found, requirement
    return re.sub(r"[-_.]+", "-", found[0]).lower()


@functools.cache
def _imported_top_levels() -> dict[str, list[str]]:
    """Third-party top-level modules the packages import, with a file importing each (read
    once: parsing every source file takes a second)."""
    found: dict[str, list[str]] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    top = name.split(".")[0]
                    if top in sys.stdlib_module_names or top in PACKAGES or top == "__future__":
                        continue
                    found.setdefault(top, []).append(str(path.relative_to(ROOT)))
    return found


@functools.cache
def _top_level_distributions() -> dict[str, list[str]]:
    return importlib.metadata.packages_distributions()


def _distributions(top: str) -> set[str]:
    return {_name(d) for d in _top_level_distributions().get(top, [])}


def test_every_imported_distribution_is_declared() -> None:
    declared = {_name(r) for r in _project()["dependencies"]}  # type: ignore[attr-defined]
    undeclared = {
        top: files[0]
        for top, files in _imported_top_levels().items()
        if not _distributions(top) & declared
    }
    assert undeclared == {}


def test_every_declared_dependency_is_imported() -> None:
    imported = set().union(*(_distributions(top) for top in _imported_top_levels()))
    declared = {_name(r) for r in _project()["dependencies"]}  # type: ignore[attr-defined]
    assert declared - imported == set()


def _requirements() -> list[Requirement]:
    project = _project()
    listed = [*project["dependencies"], *project["optional-dependencies"]["dev"]]  # type: ignore[index]
    return [Requirement(r) for r in listed]


def _constraints() -> dict[str, Version]:
    pins: dict[str, Version] = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[_name(name)] = Version(version)
    return pins


def _floor(distribution: str) -> Version:
    (requirement,) = [r for r in _requirements() if _name(r.name) == distribution]
    (floor,) = [Version(s.version) for s in requirement.specifier if s.operator == ">="]
    return floor


def _generated(pattern: str, files: str) -> set[Version]:
    stubs = ROOT / "hakuriver_common" / "proto"
    return {Version(m) for f in stubs.rglob(files) for m in re.findall(pattern, f.read_text())}


def test_constraints_pin_every_requirement_within_its_range() -> None:
    pins = _constraints()
    outside = {
        str(r): str(pins.get(_name(r.name), "unpinned"))
        for r in _requirements()
        if _name(r.name) not in pins or pins[_name(r.name)] not in r.specifier
    }
    assert outside == {}


def test_runtime_floors_admit_no_release_the_stubs_refuse() -> None:
    grpc_made = _generated(r"GRPC_GENERATED_VERSION = '([0-9.]+)'", "*_pb2_grpc.py")
    protobuf_made = _generated(r"# Protobuf Python Version: ([0-9.]+)", "*_pb2.py")
    assert grpc_made and protobuf_made
    for distribution in ("grpcio", "grpcio-health-checking", "grpcio-reflection"):
        assert _floor(distribution) >= max(grpc_made), distribution
    assert _floor("protobuf") >= max(protobuf_made)


def test_the_version_is_the_packages() -> None:
    assert hakuriver_common.__version__ == _project()["version"]


# Commands whose output is the result itself, not a report of one: a task's raw output.
RAW_OUTPUT = {("hakuriver.task", "stdout"), ("hakuriver.task", "stderr")}


def _commands(app: App, tool: str) -> Iterator[tuple[str, str, Command]]:
    for command in app.commands:
        yield tool, command.command_name, command
    for group in app.groups:
        for _, name, command in _commands(group.app, tool):
            yield tool, f"{group.name} {name}", command


def test_every_command_that_prints_a_result_takes_json() -> None:
    from hakuriver_cli import admin, client, docker, init, task, vps

    tools = {"admin": admin, "client": client, "docker": docker, "init": init, "task": task}
    tools["vps"] = vps
    without = [
        (f"hakuriver.{tool}", name)
        for tool, module in tools.items()
        for _, name, command in _commands(module.app, tool)
        if "json" not in inspect.signature(command.callback).parameters
    ]
    assert set(without) == RAW_OUTPUT
