"""The module map in docs/ARCHITECTURE.md, held by a test: dependencies point one way."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "bastion"

# Lower layers first. A module may import from its own layer or any layer below it.
LAYERS: list[set[str]] = [
    {"errors", "clock", "models", "timespec", "render", "termtext"},
    {
        "auditchain",
        "cmdpolicy",
        "sqlclass",
        "pgwire",
        "pgtext",
        "pggate",
        "requestpolicy",
        "config",
        "configreload",
        "policy",
        "access",
        "keyfiles",
        "knownhosts",
        "logs",
        "webpolicy",
        "sshalgs",
        "approvalnotice",
        "startups",
    },
    {"ca", "store", "recording", "notify", "sdnotify", "metrics"},
    {"service", "accessrequests", "doctor", "cluster", "webaccounts"},
    {"gatekeeper"},
    {"transport", "web"},
    {"daemon"},
    {"cli", "__main__"},
]
# Pure modules: no I/O libraries at all.
PURE = {
    "termtext",
    "render",
    "pgtext",
    "pggate",
    "errors",
    "clock",
    "models",
    "timespec",
    "auditchain",
    "cmdpolicy",
    "sqlclass",
    "policy",
    "access",
    "requestpolicy",
    "webpolicy",
    "sshalgs",
    "approvalnotice",
    "knownhosts",
    "startups",
}
IO_MODULES = {"socket", "asyncio", "asyncssh", "sqlite3", "psycopg", "subprocess"}


def _layer_of(module: str) -> int:
    for index, names in enumerate(LAYERS):
        if module in names:
            return index
    raise AssertionError(f"bastion.{module} is not placed in a layer of test_layers.py")


def _modules() -> list[tuple[str, Path]]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        top = parts[0] if parts[0] != "__init__" else None
        if top is not None:
            found.append((top, path))
    return found


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize(("module", "path"), _modules(), ids=lambda v: str(v))
def test_dependencies_point_down(module: str, path: Path) -> None:
    own = _layer_of(module)
    for name in _imports(path):
        if not name.startswith("bastion."):
            continue
        target = name.split(".")[1]
        if target == module:
            continue
        assert _layer_of(target) <= own, f"{path.name} (layer {own}) imports {name}"


@pytest.mark.parametrize("module", sorted(PURE))
def test_pure_modules_do_no_io(module: str) -> None:
    imported = {name.split(".")[0] for name in _imports(PACKAGE / f"{module}.py")}
    assert not imported & IO_MODULES, f"bastion.{module} imports {imported & IO_MODULES}"


@pytest.mark.parametrize("package", ["cli", "web"])
def test_cli_and_web_reach_the_network_and_store_only_through_the_service(package: str) -> None:
    modules = sorted((PACKAGE / package).glob("*.py"))
    assert modules
    for module in modules:
        imported = _imports(module)
        assert not any(n.startswith(("bastion.transport", "bastion.store")) for n in imported), (
            module.name
        )
