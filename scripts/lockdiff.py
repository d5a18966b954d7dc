"""Print `name: locked -> installed` for each package on stdin (`pip list --format=freeze`)
whose version differs from requirements/lock.txt (the path in argv[1])."""

import re
import sys
from pathlib import Path


def pins(lines: list[str]) -> dict[str, str]:
    found = {}
    for line in lines:
        m = re.match(r"([A-Za-z0-9_.-]+)==([^\s;\\]+)", line)
        if m:
            found[re.sub(r"[-_.]+", "-", m[1]).lower()] = m[2]
    return found


locked = pins(Path(sys.argv[1]).read_text(encoding="utf-8").splitlines())
installed = pins(sys.stdin.read().splitlines())
moved = [
    f"  {n}: {locked[n]} -> {v}" for n, v in sorted(installed.items()) if locked.get(n, v) != v
]
print("\n".join(moved) if moved else "  (none)")
