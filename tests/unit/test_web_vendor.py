"""The vendored asciinema player is the npm package web/package.json names, unaltered."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
VENDOR = ROOT / "bastion" / "web" / "static" / "vendor"


def _source() -> tuple[str, dict[str, str]]:
    lines = [ln for ln in (VENDOR / "SOURCE").read_text().splitlines() if not ln.startswith("#")]
    name, version = lines[0].split()
    assert name == "asciinema-player"
    sums = {file: digest for digest, file in (ln.split() for ln in lines[1:])}
    return version, sums


def test_vendored_version_is_the_one_package_json_pins() -> None:
    version, _ = _source()
    pinned = json.loads((ROOT / "web" / "package.json").read_text())["dependencies"]
    assert pinned["asciinema-player"] == version


def test_vendored_files_match_their_recorded_digests() -> None:
    _, sums = _source()
    assert set(sums) == {
        "asciinema-player.min.js",
        "asciinema-player.css",
        "asciinema-player.LICENSE",
    }
    for name, digest in sums.items():
        assert hashlib.sha256((VENDOR / name).read_bytes()).hexdigest() == digest, name
