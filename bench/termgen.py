"""Varied terminal output for the recording benchmarks: `python3 termgen.py BYTES [SEED]`.

Copied into the target user's home and run there (by the system python3, through the
bastion), so that the recording the benchmark reads is a real one. Writes BYTES bytes of
deterministic (seeded) terminal text to stdout: colored log lines, `ls --color` columns,
progress bars redrawn with `\\r` and erase-line, lines longer than 120 columns (they wrap),
cursor moves within a line, full-screen `top`-like redraws with cursor addressing every
500 blocks, shell prompts, UTF-8 (accents, CJK, box drawing, arrows). Lines end in `\\n`:
under a PTY the target's line discipline turns them into `\\r\\n`.

One needle for the search benchmark: the prompt line `$ rm -rf /var/lib/bench-needle`
every 997 blocks.
"""

from __future__ import annotations

import os
import random
import sys

ESC = "\x1b["
COLORS = (31, 32, 33, 34, 35, 36, 91, 92, 93, 94, 95, 96)
LEVELS = (("INFO", 32), ("WARN", 33), ("ERROR", 31), ("DEBUG", 36))
WORDS = (
    *("request", "user", "session", "cache", "query", "index", "worker", "deploy", "build"),
    *("token", "commit", "überprüfung", "naïve", "café", "日本語", "✓", "✗", "→", "rollback"),
    *("migrate", "vacuum", "replica"),
)
PATHS = ("/api/v1/items", "/api/v1/users", "/healthz", "/static/app.js", "/api/v2/search")
COMMANDS = ("ls -la", "git status", "make test", "tail -f app.log", "psql -c 'select 1'")
NEEDLE = "rm -rf /var/lib/bench-needle"


def log_line(r: random.Random, n: int) -> str:
    level, color = r.choice(LEVELS)
    words = " ".join(r.choice(WORDS) for _ in range(r.randint(3, 30)))
    status = r.choice((200, 200, 200, 201, 304, 404, 500, 503))
    return (
        f"2024-05-{n % 28 + 1:02d}T{n % 24:02d}:{n % 60:02d}:{n % 57:02d}.{n % 1000:03d}Z"
        f" {ESC}1;{color}m{level:5}{ESC}0m [worker-{n % 8}] {r.choice(PATHS)}/{n}"
        f" status={status} {words}\n"
    )


def ls_block(r: random.Random, n: int) -> str:
    names = [
        f"{ESC}{r.choice(COLORS)}mfile_{n}_{i}.{r.choice(('py', 'log', 'txt', 'gz'))}{ESC}0m"
        for i in range(r.randint(4, 24))
    ]
    return "".join("  ".join(names[i : i + 4]) + "\n" for i in range(0, len(names), 4))


def progress(r: random.Random, n: int) -> str:
    out = []
    for pct in range(0, 101, r.choice((2, 5, 10))):
        bar = "#" * (pct // 2) + " " * (50 - pct // 2)
        out.append(f"\r{ESC}Kdownloading artifact-{n}.tar.gz [{bar}] {pct:3d}%")
    return "".join(out) + "\n"


def top_screen(r: random.Random, n: int) -> str:
    out = [f"{ESC}H{ESC}2J{ESC}7m top - {n} up 12 days, load {r.random():.2f} {ESC}0m"]
    for row in range(2, 39):
        cpu = r.random() * 100
        bar = "│" + "█" * int(cpu // 5)
        out.append(
            f"{ESC}{row};1H{1000 + row * 7 + n % 97:>7} app  {cpu:5.1f}"
            f" {ESC}{31 if cpu > 80 else 32}m{bar:<21}{ESC}0m {r.choice(WORDS)}{ESC}K"
        )
    return "".join(out) + f"{ESC}40;1H\n"


def wrapped(r: random.Random, n: int) -> str:
    text = " ".join(r.choice(WORDS) for _ in range(r.randint(40, 120)))
    return f"{ESC}2m#{n}{ESC}0m {text}\n"


def prompt(r: random.Random, n: int) -> str:
    command = NEEDLE if n % 997 == 0 else r.choice(COMMANDS)
    return f"{ESC}1;32mbastion-t@target{ESC}0m:{ESC}1;34m~/work{ESC}0m$ {command}\n"


def edit_line(r: random.Random, n: int) -> str:
    # Type, move back, overwrite in bold magenta, erase to the end, up and down again.
    return f"value={n}{ESC}5D{ESC}1;35mEDIT{ESC}0m{ESC}K{ESC}A{ESC}B\n"


KINDS = (log_line,) * 8 + (ls_block, progress, wrapped, wrapped, prompt, prompt, edit_line)


def main() -> None:
    total = int(sys.argv[1])
    r = random.Random(int(sys.argv[2]) if len(sys.argv) > 2 else 1)
    written, n, size = 0, 0, 0
    blocks: list[bytes] = []
    while written < total:
        kind = top_screen if n % 500 == 499 else r.choice(KINDS)
        block = kind(r, n).encode()
        n += 1
        blocks.append(block)
        size += len(block)
        if size >= 1 << 16:
            data = b"".join(blocks)[: total - written]
            view = memoryview(data)
            while view:
                view = view[os.write(1, view) :]
            written += len(data)
            blocks, size = [], 0


if __name__ == "__main__":
    main()
