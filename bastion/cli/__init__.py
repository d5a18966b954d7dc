"""The `bastion` command line: parse, call the service, render, exit.

One module per command group; `base` holds the root group and the context. The CLI calls
the service API only: it never reaches into the store or the network code.
"""

from __future__ import annotations

import sys

from bastion.cli import (  # noqa: F401  (registers)
    audit,
    enrollment,
    grants,
    nodes,
    ops,
    recordings,
    sessions,
    targets,
    web,
)
from bastion.cli.base import cli

__all__ = ["cli", "main"]


def main() -> None:
    sys.exit(cli.main(prog_name="bastion", standalone_mode=True))
