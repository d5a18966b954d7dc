"""The package as a user installs it: `python -m build`, then the wheel alone in a new venv.

An editable install runs from the checkout, so it can't show that the wheel lacks a file
the product needs at run time (the web console's player, its templates). Here the sdist
and the wheel are built from the checkout the way a release is, installed with nothing
but the runtime lock (`requirements/runtime.txt`) into an empty virtualenv, and the
installed `bastion` is run from outside the checkout.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import venv
import zipfile
from pathlib import Path

import httpx2
import pytest

from tests.peers import free_port

ROOT = Path(__file__).resolve().parents[2]
VENDOR = ROOT / "bastion" / "web" / "static" / "vendor"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    # A copy of what git tracks, so the build leaves nothing (build/, *.egg-info) in the
    # checkout; --no-isolation builds with the locked setuptools already installed.
    src = out / "src"
    tracked = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT, capture_output=True, check=True,
    ).stdout.decode().split("\0")  # fmt: skip
    for name in filter(None, tracked):
        if (ROOT / name).is_file():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, src / name)
    subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(src)],
        capture_output=True, check=True,
    )  # fmt: skip
    (found,) = out.glob("bastion-*.whl")
    return found


def test_the_wheel_carries_the_player_and_templates(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    for asset in ("asciinema-player.min.js", "asciinema-player.css", "SOURCE"):
        assert f"bastion/web/static/vendor/{asset}" in names
    assert "bastion/web/templates/session.html" in names
    assert not any(n.startswith(("tests/", "bench/")) for n in names)


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    env_dir = tmp_path_factory.mktemp("wheel-venv") / "venv"
    venv.create(env_dir, with_pip=True)
    pip = [str(env_dir / "bin" / "python"), "-m", "pip", "-q", "--disable-pip-version-check"]
    subprocess.run(
        [*pip, "install", "--require-hashes", "-r", str(ROOT / "requirements" / "runtime.txt")],
        capture_output=True, check=True,
    )  # fmt: skip
    subprocess.run([*pip, "install", "--no-deps", str(wheel)], capture_output=True, check=True)
    return env_dir / "bin" / "bastion"


def _run(bastion: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BASTION_", "PYTHON"))}
    return subprocess.run(
        [str(bastion), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60
    )


def test_the_installed_wheel_runs_from_outside_the_checkout(
    installed: Path, tmp_path: Path
) -> None:
    shown = _run(installed, "--help", cwd=tmp_path)
    assert shown.returncode == 0
    assert shown.stderr == ""  # no warning from a dependency ahead of the help
    assert shown.stdout.startswith("Usage: bastion ")
    where = _run(installed.with_name("python"), "-c", "import bastion; print(bastion.__file__)",
                 cwd=tmp_path)  # fmt: skip
    assert where.stdout.strip().startswith(str(installed.parents[1]))  # not the checkout


def test_bastion_web_from_the_wheel_serves_the_player(installed: Path, tmp_path: Path) -> None:
    home = tmp_path / "home"
    made = _run(installed, "--home", str(home), "init", cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    port = free_port()
    log = tmp_path / "web.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(installed), "--home", str(home), "web", "--listen", f"127.0.0.1:{port}"],
            cwd=tmp_path, stdout=out, stderr=out, stdin=subprocess.DEVNULL,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while f"127.0.0.1:{port}" not in log.read_text():
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        with httpx2.Client(base_url=f"http://127.0.0.1:{port}") as web:
            for asset, kind in [
                ("asciinema-player.min.js", "javascript"),
                ("asciinema-player.css", "text/css"),
            ]:
                got = web.get(f"/static/vendor/{asset}")
                assert got.status_code == 200, asset
                assert kind in got.headers["content-type"]
                assert got.content == (VENDOR / asset).read_bytes()
            assert web.get("/signin").status_code == 200  # templates render
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
