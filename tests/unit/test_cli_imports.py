"""The command-line tools import only light modules when they start: typer (for help, errors
and what hakuriver_cli/direct.py leaves to it), grpc, protobuf and the generated stubs,
pydantic and the daemons' Config, rich, docker and asyncio are imported inside the functions
that need them (docs/development.md, CLI start-up).

Read from the source (no subprocess in this tier): every import a tool's module runs when it
is imported (module level, class bodies, ``if``/``try`` blocks; not functions, not
``if TYPE_CHECKING:``), followed through HakuRiver's own modules. What the tools load when
they run is checked in a real process by tests/e2e/test_cli_startup.py.
"""

from __future__ import annotations

import ast
import importlib.util
from collections.abc import Iterator
from pathlib import Path

import pytest

TOOLS = [
    "hakuriver_cli.task",
    "hakuriver_cli.client",
    "hakuriver_cli.vps",
    "hakuriver_cli.ssh",
    "hakuriver_cli.admin",
    "hakuriver_cli.docker",
]
HEAVY = (
    "typer",
    "click",
    "grpc",
    "google",
    "pydantic",
    "pydantic_settings",
    "rich",
    "docker",
    "asyncio",
    "sqlmodel",
    "sqlalchemy",
    "cryptography",
    "hakuriver_common.proto",
    "hakuriver_common.config",
    "hakuriver_host",
    "hakuriver_runner",
)
OURS = ("hakuriver_cli", "hakuriver_common", "hakuriver_host", "hakuriver_runner")


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _run_at_import(body: list[ast.stmt]) -> Iterator[ast.stmt]:
    """The statements that run when the module is imported."""
    for node in body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        yield node
        if isinstance(node, ast.ClassDef):
            yield from _run_at_import(node.body)
        elif isinstance(node, ast.If):
            if not _is_type_checking(node.test):
                yield from _run_at_import(node.body)
            yield from _run_at_import(node.orelse)
        elif isinstance(node, ast.Try):
            for block in (node.body, node.orelse, node.finalbody):
                yield from _run_at_import(block)
            for handler in node.handlers:
                yield from _run_at_import(handler.body)
        elif isinstance(node, ast.With):
            yield from _run_at_import(node.body)


def _is_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _imports(module: str) -> set[str]:
    """The modules ``module`` imports when it is imported (packages included)."""
    spec = importlib.util.find_spec(module)
    assert spec is not None and spec.origin is not None, module
    tree = ast.parse(Path(spec.origin).read_text())
    package = module if spec.submodule_search_locations else module.rpartition(".")[0]
    found: set[str] = set()
    for node in _run_at_import(tree.body):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                base = f"{base}.{node.module}" if node.module else base
            if base == "__future__":
                continue
            found.add(base)
            found.update(
                f"{base}.{alias.name}" for alias in node.names if _is_module(f"{base}.{alias.name}")
            )
    with_parents = set()
    for name in found:
        parts = name.split(".")
        with_parents.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
    return with_parents


def imported_by(module: str) -> set[str]:
    """Every module importing ``module`` imports, through HakuRiver's own modules."""
    seen: set[str] = set()
    todo = [module, *_parents(module)]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        if name.split(".")[0] in OURS and not name.startswith("hakuriver_common.proto"):
            todo.extend(_imports(name))
    return seen


def _parents(module: str) -> list[str]:
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def _heavy(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if any(m == h or m.startswith(h + ".") for h in HEAVY))


@pytest.mark.parametrize("tool", TOOLS)
def test_a_tool_imports_nothing_heavy_when_it_starts(tool: str) -> None:
    modules = imported_by(tool)
    assert "hakuriver_common.commands" in modules  # the reading sees imports at all
    assert _heavy(modules) == []


def test_the_reading_sees_a_heavy_import() -> None:
    """The check itself: the daemons' Config module imports pydantic at its top."""
    assert "pydantic" in _heavy(imported_by("hakuriver_common.config"))
    assert "grpc" in _heavy(imported_by("hakuriver_common.channels"))
