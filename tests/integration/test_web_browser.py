"""The web console end to end, in a real browser: Debian's headless Chromium driven by
Playwright (its own browser downloads are never used), against `bastion serve` running the
console inside it (`[web] listen`), with sessions made by the real `ssh` and `psql`.

What it proves: a person signs in; a recorded session's page plays its recording in the
asciinema player, which shows the session's output at a seek point; search finds the
output and links to that moment; a destructive statement waiting in a real psql session
is approved from the Approvals page (on a phone-sized screen) and psql proceeds at once.
Screenshots of each step are written under `test-artifacts/web/` (git-ignored).
"""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bastion.clock import SystemClock
from bastion.config import open_home
from bastion.models import WebRole
from bastion.service import Bastion
from bastion.webaccounts import WebAccounts
from tests.integration import pg_helpers as pg
from tests.integration.conftest import Server, cli, wait_until
from tests.peers import Postgres, Sshd, free_port

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "web"
PASSWORD = "correct horse battery"
MARK = "bastion-browser-mark"

playwright = pytest.importorskip("playwright.sync_api")
pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="needs Debian's chromium (scripts/test installs it)"
)


@pytest.fixture(scope="module")
def console(
    postgres: Postgres, sshd: Sshd, target_login_key: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Server, str]]:
    """`bastion serve` with the web console on, a PostgreSQL and an SSH target, and alice."""
    base = tmp_path_factory.mktemp("web-browser")
    home = pg.make_pg_home(base, postgres, pg.APP_DB)
    cli(
        home,
        *("target", "add-ssh", "prod-web", "--host", pg.LOOPBACK, "--port", str(sshd.port)),
        *("--user", sshd.login_user, "--identity", str(target_login_key)),
        *("--host-key", str(sshd.host_pub_path)),
    )
    web_port = free_port()
    config = pg.config_text(pg.APP_DB).replace(
        f'timeout = "{pg.APPROVAL_TIMEOUT_S}s"', 'timeout = "2m"'
    )
    (home / "bastion.toml").write_text(config + f'\n[web]\nlisten = "127.0.0.1:{web_port}"\n')
    service = Bastion.open(open_home(str(home)), SystemClock(), "root")
    try:
        WebAccounts(service, rounds=4).add_user("alice", WebRole.APPROVER, PASSWORD)
    finally:
        service.close()
    server = Server(home, base)
    server.start()
    url = f"http://127.0.0.1:{web_port}"
    try:
        wait_until(lambda: f"web console on {url}" in server.log(), timeout=20)
        yield server, url
    finally:
        server.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    with playwright.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture(scope="module")
def artifacts() -> Path:
    shutil.rmtree(ARTIFACTS, ignore_errors=True)
    ARTIFACTS.mkdir(parents=True)
    print(f"\nweb console screenshots: {ARTIFACTS}")
    return ARTIFACTS


def sign_in(page: object, url: str) -> None:
    page.goto(f"{url}/sessions")  # type: ignore[attr-defined]
    assert "/signin" in page.url  # type: ignore[attr-defined]
    page.fill("input[name=name]", "alice")  # type: ignore[attr-defined]
    page.fill("input[name=password]", PASSWORD)  # type: ignore[attr-defined]
    page.click("form[action='/signin'] button[type=submit]")  # type: ignore[attr-defined]
    page.wait_for_url(f"{url}/sessions")  # type: ignore[attr-defined]


def test_replay_and_search_a_recorded_ssh_session(
    console: tuple[Server, str], browser: object, artifacts: Path
) -> None:
    server, url = console
    grant = server.issue("prod-web", task="web-replay")
    done = server.ssh("prod-web", grant.key, f"echo first line; sleep 0.3; echo {MARK}; echo last")
    assert done.returncode == 0, done.stderr
    [session] = server.ended_sessions(grant)

    page = browser.new_page(viewport={"width": 1280, "height": 900})  # type: ignore[attr-defined]
    sign_in(page, url)
    assert session["id"] in page.inner_text("table.list")

    # Search finds the line and links to the moment it was shown.
    page.click("nav a[href='/search']")
    page.fill("input[name=q]", MARK)
    page.click("form.filters button[type=submit]")
    link = page.locator("table.matches a.at").first
    assert session["id"] in page.inner_text("table.matches")
    page.screenshot(path=str(artifacts / "1-search.png"), full_page=True)
    href = link.get_attribute("href")
    assert href is not None and re.fullmatch(rf"/sessions/{session['id']}\?t=[0-9.]+", href)
    seconds = float(href.split("t=")[1])
    assert seconds >= 0.2  # after the sleep: the seek point is inside the recording

    # The replay opens at that moment, paused, and the player shows the output there.
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    link.click()
    page.wait_for_selector(".ap-term-text, .ap-term")
    page.wait_for_function(
        "mark => document.querySelector('#player').innerText.includes(mark)", arg=MARK
    )
    shown = page.inner_text("#player")
    assert "first line" in shown and MARK in shown
    page.screenshot(path=str(artifacts / "2-replay-at-seek-point.png"), full_page=True)
    # Seeking back into the `sleep 0.3` shows the screen before the mark.
    page.fill("#seek", f"{seconds - 0.15:.3f}")
    page.press("#seek", "Enter")
    page.wait_for_function(
        "mark => !document.querySelector('#player').innerText.includes(mark)", arg=MARK
    )
    assert "first line" in page.inner_text("#player")
    assert errors == []  # nothing blocked by the CSP, no script error
    page.close()


def test_watch_a_session_live(
    console: tuple[Server, str], browser: object, artifacts: Path
) -> None:
    server, url = console
    grant = server.issue("prod-web", task="web-live")
    command = f"echo started; sleep 2; echo {MARK}-live; sleep 3"
    agent = server.spawn("prod-web", grant.key, command)
    session = server.active_session(grant)
    page = browser.new_page(viewport={"width": 1280, "height": 900})  # type: ignore[attr-defined]
    sign_in(page, url)
    page.goto(f"{url}/sessions/{session['id']}")
    page.click("a[href$='/live']")
    page.wait_for_function(
        "mark => document.querySelector('#player').innerText.includes(mark)",
        arg=f"{MARK}-live",
        timeout=15_000,
    )
    assert "started" in page.inner_text("#player")
    assert agent.running()  # shown while the session still runs
    page.screenshot(path=str(artifacts / "0-live.png"), full_page=True)
    assert agent.wait(15) == 0
    page.close()


def test_approve_a_waiting_statement_from_a_phone(
    console: tuple[Server, str], browser: object, artifacts: Path, postgres: Postgres
) -> None:
    server, url = console
    table = f"t_{os.urandom(4).hex()}"
    postgres.psql(f"SET ROLE {pg.APP_USER}; CREATE TABLE {table} (id int);", db=pg.APP_DB)
    tunnel = pg.open_tunnel(server, pg.issue(server))
    client = pg.spawn_psql(tunnel.port, f"DROP TABLE {table}")
    approval_id = client.wait_stderr(pg.APPROVAL_NOTICE).group(1)

    phone = browser.new_context(  # type: ignore[attr-defined]
        viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True
    )
    page = phone.new_page()
    sign_in(page, url)
    page.goto(f"{url}/approvals")
    card = page.locator(f"article#{approval_id}")
    assert f"DROP TABLE {table}" in card.inner_text()
    page.screenshot(path=str(artifacts / "3-approvals-phone.png"), full_page=True)
    assert client.running()
    card.locator("input[name=reason]").fill("planned cleanup")
    started = time.monotonic()
    card.locator("button.ok").click()
    page.wait_for_url(f"{url}/approvals")

    assert client.wait(10) == 0, client.stderr
    waited = time.monotonic() - started
    assert client.stdout == "DROP TABLE\n"
    assert f"NOTICE:  [bastion] approved by alice ({approval_id})" in client.stderr
    assert waited < 5, waited  # released at once (the change feed polls every 200 ms)
    assert approval_id in page.inner_text("table.list")  # now under "Recently decided"
    page.screenshot(path=str(artifacts / "4-approved-phone.png"), full_page=True)
    tunnel.stop()

    # The PostgreSQL session's page shows the statement log with the verdict.
    [forward] = server.ended_sessions(tunnel.grant)
    desktop = browser.new_page(viewport={"width": 1280, "height": 900})  # type: ignore[attr-defined]
    sign_in(desktop, url)
    desktop.goto(f"{url}/sessions/{forward['id']}")
    log = desktop.inner_text("table.statements")
    assert f"DROP TABLE {table}" in log and f"approved {approval_id}" in log
    desktop.screenshot(path=str(artifacts / "5-statement-log.png"), full_page=True)
    phone.close()
    desktop.close()
