"""The CLI reaches the terminal through `cli.base.echo` only, which takes rendered text.

`bastion.render` escapes every value it is given; this test holds the other half: no
command writes a string to the terminal some other way (click.echo, print, sys.stdout).
The one exception is `recordings play`, which replays a recorded terminal stream to
the terminal on purpose.
"""

from __future__ import annotations

import ast
from pathlib import Path

CLI = Path(__file__).resolve().parents[2] / "bastion" / "cli"

# (module, function) allowed to write to the terminal directly, and why.
RAW_WRITERS = {
    ("base.py", "echo"): "the one writer: rendered `Text` as it is, anything else escaped",
    ("recordings.py", "recordings_play"): "replays the recorded terminal stream on purpose",
}
WRITERS = {"echo", "secho", "print", "write", "writelines", "stdout", "stderr", "get_text_stream"}


def _writes(tree: ast.AST) -> list[tuple[str, int]]:
    """Terminal writers used under `tree`: click.echo/secho, print, sys.stdout/stderr."""
    found = []
    asking = {  # sys.stdin/stderr.isatty(): whether there is a terminal, no write
        id(node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute) and node.attr == "isatty"
    }
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in WRITERS and id(node) not in asking:
            base = node.value
            if isinstance(base, ast.Name) and base.id in ("click", "sys"):
                found.append((f"{base.id}.{node.attr}", node.lineno))
        elif isinstance(node, ast.Name) and node.id == "print":
            found.append(("print", node.lineno))
        elif isinstance(node, ast.ImportFrom) and node.module in ("click", "sys"):
            names = {alias.name for alias in node.names} & WRITERS
            found += [(f"from {node.module} import {n}", node.lineno) for n in names]
    return found


def test_only_echo_writes_to_the_terminal() -> None:
    offenders = []
    for path in sorted(CLI.glob("*.py")):
        tree = ast.parse(path.read_text())
        allowed: set[int] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef) and (path.name, node.name) in RAW_WRITERS:
                allowed |= {line for _, line in _writes(node)}
        offenders += [
            f"{path.name}:{line}: {what}" for what, line in _writes(tree) if line not in allowed
        ]
    assert offenders == []


def test_text_is_made_only_by_render() -> None:
    """`render.Text(...)` would declare a raw string safe: only `render` itself may."""
    offenders = []
    for path in sorted(CLI.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "Text"
            ) or (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id == "Text"
            ):
                offenders.append(f"{path.name}:{node.lineno}")
    assert offenders == []


def test_the_raw_writers_still_exist() -> None:
    """An allowance for a function that no longer writes would hide nothing; keep it honest."""
    for (module, function), _why in RAW_WRITERS.items():
        tree = ast.parse((CLI / module).read_text())
        [node] = [
            n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == function
        ]
        assert _writes(node), (module, function)
