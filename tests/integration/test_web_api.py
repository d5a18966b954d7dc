"""The web console's HTTP API: every route's authorization, CSRF, sign-in, and the actions.

Most tests drive the real starlette application in-process (starlette's TestClient) on a
real bastion home (SQLite store, recordings on disk, the service API underneath); one
starts `bastion web` as a subprocess with TLS and talks to the real uvicorn over HTTPS.
What they prove: signed out, nothing is readable; each role can do exactly what the
matrix says; every POST needs the CSRF token of its own session; sign-in is throttled;
a login link works once; decisions, revocations and kills made in the console are the
service's, audited under the person's name, with no self-approval.
"""

from __future__ import annotations

import datetime as dt
import html
import json
import re
import signal
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import httpx2
import pytest
from cryptography.hazmat.primitives import serialization
from starlette.testclient import TestClient

from bastion.accessrequests import AccessRequests
from bastion.clock import SystemClock
from bastion.config import open_home
from bastion.models import (
    Approval,
    EndReason,
    Recording,
    RecordingState,
    RequestState,
    Session,
    SessionKind,
    WebRole,
)
from bastion.recording import format as fmt
from bastion.service import Bastion
from bastion.web.app import create_app, csrf_token
from bastion.webaccounts import WebAccounts
from tests.cli.conftest import add_ssh_target, make_key, ok, ok_json, pub
from tests.integration.test_postgres_tls import _ca, _pem, _server_cert
from tests.peers import free_port
from tests.unit.recording_synth import header, write_recording

PASSWORD = "correct horse battery"
SESSION = "s-web0001"
LIVE = "s-live0001"
MARK = "hello-from-the-recording"
USERS = {"audrey": WebRole.AUDITOR, "alice": WebRole.APPROVER, "adam": WebRole.ADMIN}
NOW = dt.datetime.now(dt.UTC)


@dataclass
class Seeded:
    home: Path
    grant: str
    request: str


def _seed(base: Path) -> Seeded:
    home = base / "home"
    home.mkdir()
    ok(home, "init")
    add_ssh_target(home, "prod-web")
    grant = ok_json(
        home,
        *("grant", "issue", "--agent", "bot", "--target", "prod-web", "--task", "t-web"),
        *("--ttl", "1h", "--generate-key", str(base / "agent")),
    )["id"]
    service = Bastion.open(open_home(str(home)), SystemClock(), "seed")
    try:
        accounts = WebAccounts(service, rounds=4)
        for name, role in USERS.items():
            accounts.add_user(name, role, PASSWORD)
        accounts.add_user("bot", WebRole.APPROVER, PASSWORD)  # the agent's own name
        recordings = service.home.recordings_dir
        events = [(0.1, fmt.OUTPUT, b"$ echo hi\r\n"), (0.5, fmt.OUTPUT, MARK.encode() + b"\r\n")]
        events.append((0.7, fmt.MARKER, b"approval a-web0001 approved by alice"))
        write_recording(recordings / f"{SESSION}.rec", events, header(session=SESSION))
        live = [(0.2, fmt.OUTPUT, b"live output one\r\n")]
        write_recording(recordings / f"{LIVE}.rec", live, header(session=LIVE), close=False)
        with service.store.transaction() as tx:
            for sid in (SESSION, LIVE):
                tx.insert_session(
                    Session(
                        sid,
                        grant,
                        "bot",
                        "t-web",
                        "prod-web",
                        SessionKind.SHELL,
                        "127.0.0.1:5",
                        None,
                        NOW,
                        "node-1",
                    )
                )
                tx.insert_recording(
                    Recording(
                        sid,
                        f"{sid}.rec",
                        "node-1",
                        "bot",
                        grant,
                        "t-web",
                        "prod-web",
                        SessionKind.SHELL,
                        NOW,
                        RecordingState.RECORDING,
                    )
                )
            tx.update_recording(SESSION, RecordingState.CLOSED, ended_at=NOW, size=1)
            ended = tx.get_session(SESSION)
            assert ended is not None
            tx.end_session(replace(ended, ended_at=NOW, end_reason=EndReason.EXIT, exit_status=0))
            for approval_id in ("a-web0001", "a-web0002", "a-web0003"):
                tx.insert_approval(
                    Approval(
                        approval_id,
                        "exec",
                        LIVE,
                        grant,
                        "bot",
                        "t-web",
                        "prod-web",
                        f"rm -rf /srv/{approval_id}",
                        ("rm -r",),
                        NOW,
                        NOW + dt.timedelta(hours=1),
                    )
                )
        requests = AccessRequests(service)
        agent_key = make_key(base / "enrolled")
        agent = requests.enroll("req-bot", pub(agent_key), ["prod-web"], None)
        request = requests.open(
            agent, '--target prod-web --task t-req --ttl 10m --reason "fix it"', "127.0.0.1:6", "n"
        )
    finally:
        service.close()
    return Seeded(home, grant, request.id)


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Seeded:
    return _seed(tmp_path_factory.mktemp("web-api"))


@pytest.fixture
def fresh(tmp_path: Path) -> Seeded:
    """A home of the test's own, for tests that change state."""
    return _seed(tmp_path)


def _app_client(home: Path) -> Iterator[TestClient]:
    service = Bastion.open(open_home(str(home)), SystemClock(), "web")
    try:
        with TestClient(create_app(service, SystemClock()), base_url="http://127.0.0.1") as c:
            yield c
    finally:
        service.close()


@pytest.fixture
def client(seeded: Seeded) -> Iterator[TestClient]:
    yield from _app_client(seeded.home)


@pytest.fixture
def fresh_client(fresh: Seeded) -> Iterator[TestClient]:
    yield from _app_client(fresh.home)


def sign_in(client: TestClient, name: str, password: str = PASSWORD) -> str:
    """Sign in through the form; returns the CSRF token of the new session."""
    form = client.get("/signin")
    pre = re.search(r'name="csrf" value="([0-9a-f]+)"', form.text)
    assert pre is not None
    response = client.post(
        "/signin",
        data={"csrf": pre.group(1), "name": name, "password": password, "next": "/sessions"},
        follow_redirects=False,
    )
    assert response.status_code == 303, response.text
    return csrf_token(client.cookies["bastion_session"])


def audit(home: Path, action: str) -> list[tuple[str, dict[str, object]]]:
    service = Bastion.open(open_home(str(home)), SystemClock(), "t")
    try:
        return [(e.actor, e.details) for e in service.audit_events() if e.action == action]
    finally:
        service.close()


# -- the authorization matrix, route by route --------------------------------------------

# (method, path as the table declares it, a concrete path, the permission's users)
READ = set(USERS)
DECIDE = {"alice", "adam"}
ADMIN = {"adam"}
ROUTES = [
    ("GET", "/", "/", READ),
    ("GET", "/sessions", "/sessions", READ),
    ("GET", "/sessions/{id}", f"/sessions/{SESSION}", READ),
    ("GET", "/sessions/{id}/cast", f"/sessions/{SESSION}/cast", READ),
    ("GET", "/sessions/{id}/live", f"/sessions/{LIVE}/live", READ),
    ("GET", "/sessions/{id}/live/events", "/sessions/s-missing/live/events", READ),
    ("GET", "/search", f"/search?q={MARK}", READ),
    ("GET", "/approvals", "/approvals", READ),
    ("GET", "/grants", "/grants", READ),
    ("GET", "/users", "/users", ADMIN),
    ("POST", "/signout", "/signout", READ),
    ("POST", "/sessions/{id}/kill", "/sessions/s-missing/kill", ADMIN),
    ("POST", "/approvals/{id}/{verdict:str}", "/approvals/a-missing/approve", DECIDE),
    ("POST", "/requests/{id}/{verdict:str}", "/requests/r-missing/deny", DECIDE),
    ("POST", "/grants/{id}/revoke", "/grants/g-missing/revoke", DECIDE),
    ("POST", "/users/{name}/remove", "/users/nobody/remove", ADMIN),
]
PUBLIC = {("GET", "/signin"), ("POST", "/signin"), ("GET", "/link/{token}"), ("POST", "/link")}


def test_every_route_is_in_this_matrix(client: TestClient) -> None:
    declared = {(method, path) for path, method, _ in client.app.state.routes_table}  # type: ignore[attr-defined]
    assert declared == {(m, p) for m, p, _, _ in ROUTES} | PUBLIC


@pytest.mark.parametrize(("method", "declared", "path", "who"), ROUTES, ids=lambda v: str(v))
def test_signed_out_reads_nothing(
    client: TestClient, method: str, declared: str, path: str, who: set[str]
) -> None:
    html = client.request(method, path, headers={"accept": "text/html"}, follow_redirects=False)
    api = client.request(method, path, follow_redirects=False)
    if method == "GET" and declared != "/sessions/{id}/live/events":
        assert html.status_code == 303
        assert html.headers["location"] == f"/signin?next={path.split('?')[0]}"
    else:
        assert html.status_code == 401
    assert api.status_code == 401
    for response in (html, api):
        assert MARK not in response.text and "bot" not in response.text


@pytest.mark.parametrize("name", sorted(USERS))
@pytest.mark.parametrize(("method", "declared", "path", "who"), ROUTES, ids=lambda v: str(v))
def test_each_role_can_do_what_the_matrix_says(
    client: TestClient, name: str, method: str, declared: str, path: str, who: set[str]
) -> None:
    csrf = sign_in(client, name)
    data = {"csrf": csrf, "reason": "matrix test"}
    if method == "GET" and declared.endswith("/live/events"):
        response = client.get(path)  # unknown session: 404 once allowed
        assert response.status_code == (404 if name in who else 403)
        return
    response = client.request(method, path, data=data if method == "POST" else None,
                              follow_redirects=False)  # fmt: skip
    if name in who:
        # Allowed: the page, a redirect after the action, or the service's own 404 for the
        # made-up ids the POSTs use (nothing real is changed by this test).
        assert response.status_code in (200, 303, 404), response.text
        assert "may not do this" not in response.text
    else:
        assert response.status_code == 403
        assert f"your role ({USERS[name].value}) may not do this" in response.text


@pytest.mark.parametrize(
    ("path"), [p for m, _, p, _ in ROUTES if m == "POST"] + ["/signin", "/link"]
)
def test_every_post_needs_the_csrf_token_of_its_own_session(client: TestClient, path: str) -> None:
    other = TestClient(client.app, base_url="http://127.0.0.1")
    foreign = sign_in(other, "adam")
    own = sign_in(client, "adam")
    for token in (None, "", "0" * 64, foreign, own.upper()):
        data = {"reason": "x", "name": "adam", "password": PASSWORD, "token": "t"}
        if token is not None:
            data["csrf"] = token
        response = client.post(path, data=data, follow_redirects=False)
        assert response.status_code == 403, (path, token, response.status_code)
        assert "CSRF token" in response.text or "the form expired" in response.text
    # The header form is accepted too (for scripts); the session stays signed in.
    response = client.post(
        "/grants/g-missing/revoke", headers={"x-csrf-token": own}, follow_redirects=False
    )
    assert response.status_code == 404


# -- signing in ------------------------------------------------------------------------------


def test_cookie_and_security_headers(client: TestClient) -> None:
    page = client.get("/signin")
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    assert page.headers["referrer-policy"] == "no-referrer"
    form = re.search(r'name="csrf" value="([0-9a-f]+)"', page.text)
    assert form is not None
    response = client.post(
        "/signin",
        data={"csrf": form.group(1), "name": "audrey", "password": PASSWORD},
        follow_redirects=False,
    )
    cookie = next(c for c in response.headers.get_list("set-cookie") if "bastion_session=" in c)
    assert "HttpOnly" in cookie and "SameSite=lax" in cookie
    assert "Secure" not in cookie  # no TLS here; see test_tls_console_over_real_uvicorn
    assert response.headers["location"] == "/sessions"


@pytest.mark.parametrize("next_path", ["//evil.example/x", "https://evil.example/", "/\\evil"])
def test_no_open_redirect_after_sign_in(client: TestClient, next_path: str) -> None:
    form = client.get("/signin")
    pre = re.search(r'name="csrf" value="([0-9a-f]+)"', form.text)
    assert pre is not None
    response = client.post(
        "/signin",
        data={"csrf": pre.group(1), "name": "audrey", "password": PASSWORD, "next": next_path},
        follow_redirects=False,
    )
    assert response.headers["location"] == "/sessions"


def test_sign_in_is_throttled_and_audited(fresh: Seeded, fresh_client: TestClient) -> None:
    client = fresh_client
    for _ in range(5):
        form = client.get("/signin")
        pre = re.search(r'name="csrf" value="([0-9a-f]+)"', form.text)
        assert pre is not None
        response = client.post(
            "/signin", data={"csrf": pre.group(1), "name": "alice", "password": "wrong guess!"}
        )
        assert response.status_code == 401
        assert "wrong user name or password" in response.text
    form = client.get("/signin")
    pre = re.search(r'name="csrf" value="([0-9a-f]+)"', form.text)
    assert pre is not None
    refused = client.post(
        "/signin", data={"csrf": pre.group(1), "name": "alice", "password": PASSWORD}
    )
    assert refused.status_code == 429
    assert int(refused.headers["retry-after"]) > 0
    assert "bastion_session" not in client.cookies
    failures = audit(fresh.home, "web.signin_failed")
    assert [actor for actor, _ in failures] == ["alice"] * 5
    assert all(d["client"] == "testclient" for _, d in failures)
    assert audit(fresh.home, "web.signed_in") == []


def test_login_link_works_once(fresh: Seeded, fresh_client: TestClient) -> None:
    service = Bastion.open(open_home(str(fresh.home)), SystemClock(), "root")
    try:
        token, _ = WebAccounts(service).login_link("audrey")
    finally:
        service.close()
    page = fresh_client.get(f"/link/{token}")
    assert page.status_code == 200 and "Sign in with this link" in page.text
    again = fresh_client.get(f"/link/{token}")  # a GET (a chat preview) doesn't use it
    pre = re.search(r'name="csrf" value="([0-9a-f]+)"', again.text)
    assert pre is not None
    used = fresh_client.post(
        "/link", data={"csrf": pre.group(1), "token": token}, follow_redirects=False
    )
    assert used.status_code == 303 and used.headers["location"] == "/approvals"
    assert fresh_client.get("/approvals").status_code == 200
    fresh_client.cookies.delete("bastion_session")
    form = fresh_client.get(f"/link/{token}")
    pre = re.search(r'name="csrf" value="([0-9a-f]+)"', form.text)
    assert pre is not None
    second = fresh_client.post("/link", data={"csrf": pre.group(1), "token": token})
    assert second.status_code == 401 and "not valid" in second.text
    assert [a for a, d in audit(fresh.home, "web.signed_in") if d["method"] == "link"] == ["audrey"]


def test_sign_out_ends_the_session(client: TestClient) -> None:
    csrf = sign_in(client, "audrey")
    assert client.post("/signout", data={"csrf": csrf}, follow_redirects=False).status_code == 303
    assert client.get("/sessions", follow_redirects=False).status_code == 401


# -- the pages' content ------------------------------------------------------------------------


def test_sessions_filters(client: TestClient, seeded: Seeded) -> None:
    sign_in(client, "audrey")
    assert SESSION in client.get("/sessions?agent=bot").text
    assert SESSION in client.get(f"/sessions?grant={seeded.grant}&task=t-web").text
    assert SESSION not in client.get("/sessions?agent=someone-else").text
    assert SESSION not in client.get("/sessions?end=active").text
    assert LIVE in client.get("/sessions?end=active").text
    assert SESSION not in client.get("/sessions?since=2000-01-01&until=2000-01-02").text
    assert client.get("/sessions?end=nonsense").status_code == 400
    assert client.get("/sessions?since=yesterday-ish").status_code == 400


def test_replay_serves_asciicast_with_markers_and_audits_the_view(
    client: TestClient, seeded: Seeded
) -> None:
    sign_in(client, "audrey")
    page = client.get(f"/sessions/{SESSION}?t=0.5")
    assert 'data-cast="/sessions/s-web0001/cast" data-start="0.5"' in page.text
    assert "approval a-web0001 approved by alice" in page.text  # the event list
    cast = client.get(f"/sessions/{SESSION}/cast")
    lines = [json.loads(line) for line in cast.text.splitlines()]
    assert lines[0]["version"] == 2
    assert any(e[1] == "o" and MARK in e[2] for e in lines[1:])
    assert [e[2] for e in lines[1:] if e[1] == "m"] == ["approval a-web0001 approved by alice"]
    assert ("audrey", {"session": SESSION, "how": "replay"}) in audit(
        seeded.home, "recording.viewed"
    )


def test_search_links_to_the_moment(client: TestClient) -> None:
    sign_in(client, "audrey")
    page = client.get(f"/search?q={MARK}")
    assert f'href="/sessions/{SESSION}?t=0.500"' in page.text
    assert client.get("/search?q=(&regex=1").status_code == 400


def test_live_stream_follows_the_recording(client: TestClient, seeded: Seeded) -> None:
    sign_in(client, "audrey")
    path = seeded.home / "recordings" / f"{LIVE}.rec"

    def append_later() -> None:
        time.sleep(0.6)
        with path.open("ab") as f:
            f.write(fmt.encode(fmt.OUTPUT, 1.0, b"live output two\r\n"))
            f.flush()
            time.sleep(0.4)
            f.write(fmt.encode_json(fmt.END, 1.5, {"end_reason": "exit"}))

    writer = threading.Thread(target=append_later)
    writer.start()
    messages = []
    with client.stream("GET", f"/sessions/{LIVE}/live/events") as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith(("data:", "event:")):
                messages.append(line)
            if line == "event: done":
                break
    writer.join()
    first = json.loads(messages[0].removeprefix("data: "))
    assert (first["cols"], first["rows"]) == (80, 24)
    assert "live output one" in first["init"]
    assert json.loads(messages[1].removeprefix("data: ")) == [1.0, "o", "live output two\r\n"]
    assert messages[-1] == "event: done"


# -- actions through the console: the service's rules, audited under the person ----------------


def test_approve_and_deny_a_command_as_approver(fresh: Seeded, fresh_client: TestClient) -> None:
    csrf = sign_in(fresh_client, "alice")
    pending = fresh_client.get("/approvals").text
    assert "rm -rf /srv/a-web0001" in pending and fresh.request in pending
    ok_ = fresh_client.post(
        "/approvals/a-web0001/approve", data={"csrf": csrf, "reason": "go"}, follow_redirects=False
    )
    assert ok_.status_code == 303
    no = fresh_client.post("/approvals/a-web0002/deny", data={"csrf": csrf, "reason": "not now"})
    assert no.status_code == 200
    again = fresh_client.post("/approvals/a-web0001/deny", data={"csrf": csrf})
    assert again.status_code == 409 and "already approved (by alice)" in again.text
    decided = audit(fresh.home, "approval.decided")
    assert [(a, d["approval"], d["state"], d["reason"]) for a, d in decided] == [
        ("alice", "a-web0001", "approved", "go"),
        ("alice", "a-web0002", "denied", "not now"),
    ]
    assert fresh_client.post("/approvals/a-web0003/maybe", data={"csrf": csrf}).status_code == 404


def test_no_self_approval(fresh: Seeded, fresh_client: TestClient) -> None:
    csrf = sign_in(fresh_client, "bot")  # an approver named like the agent
    assert "someone else decides" in fresh_client.get("/approvals").text
    response = fresh_client.post("/approvals/a-web0003/approve", data={"csrf": csrf})
    assert response.status_code == 400
    assert "bot asked for a-web0003 and can't approve it" in html.unescape(response.text)
    assert audit(fresh.home, "approval.decided") == []


def test_access_requests_are_decided_in_the_console(
    fresh: Seeded, fresh_client: TestClient
) -> None:
    csrf = sign_in(fresh_client, "alice")
    no_reason = fresh_client.post(f"/requests/{fresh.request}/deny", data={"csrf": csrf})
    assert no_reason.status_code == 400 and "the agent is told why" in no_reason.text
    approved = fresh_client.post(
        f"/requests/{fresh.request}/approve",
        data={"csrf": csrf, "ttl": "5m", "reason": "ok"},
        follow_redirects=False,
    )
    assert approved.status_code == 303
    [(actor, details)] = audit(fresh.home, "request.decided")
    assert (actor, details["state"], details["ttl_seconds"]) == ("alice", "approved", 300)
    service = Bastion.open(open_home(str(fresh.home)), SystemClock(), "t")
    try:
        request = AccessRequests(service).get_request(fresh.request)
    finally:
        service.close()
    assert request.state is RequestState.APPROVED and request.decided_by == "alice"
    grants = fresh_client.get("/grants").text
    assert request.grant_id is not None and request.grant_id in grants


def test_revoke_kill_and_remove(fresh: Seeded, fresh_client: TestClient) -> None:
    csrf = sign_in(fresh_client, "adam")
    assert "left" in fresh_client.get("/grants").text
    revoked = fresh_client.post(
        f"/grants/{fresh.grant}/revoke",
        data={"csrf": csrf, "reason": "incident"},
        follow_redirects=False,
    )
    assert revoked.status_code == 303
    assert fresh.grant not in fresh_client.get("/grants").text
    killed = fresh_client.post(
        f"/sessions/{LIVE}/kill", data={"csrf": csrf, "reason": "stop"}, follow_redirects=False
    )
    assert killed.status_code == 303
    assert [(a, d["reason"]) for a, d in audit(fresh.home, "grant.revoked")] == [
        ("adam", "incident")
    ]
    assert [(a, d["session"]) for a, d in audit(fresh.home, "session.kill_requested")] == [
        ("adam", LIVE)
    ]
    assert fresh_client.post("/users/adam/remove", data={"csrf": csrf}).status_code == 400
    removed = fresh_client.post("/users/audrey/remove", data={"csrf": csrf}, follow_redirects=False)
    assert removed.status_code == 303
    assert "audrey" not in fresh_client.get("/users").text


# -- a real uvicorn, with TLS ------------------------------------------------------------------


def _tls_files(directory: Path) -> tuple[Path, Path, Path]:
    """A test CA and a certificate for 127.0.0.1 it signed: (CA file, cert file, key file)."""
    ca_key, ca = _ca("web console test CA")
    key, cert = _server_cert(ca_key, ca)
    paths = directory / "ca.pem", directory / "web.crt", directory / "web.key"
    paths[0].write_bytes(_pem(ca))
    paths[1].write_bytes(_pem(cert))
    paths[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return paths


def test_tls_console_over_real_uvicorn(seeded: Seeded, tmp_path: Path) -> None:
    ca, cert, key = _tls_files(tmp_path)
    port = free_port()
    bastion = Path(sys.executable).with_name("bastion")
    log = tmp_path / "web.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(bastion), "--home", str(seeded.home), "web", "--listen", f"127.0.0.1:{port}",
             "--tls-cert", str(cert), "--tls-key", str(key)],
            stdout=out, stderr=out, stdin=subprocess.DEVNULL,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while f"web console on https://127.0.0.1:{port}" not in log.read_text():
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        with httpx2.Client(
            base_url=f"https://127.0.0.1:{port}", verify=ssl.create_default_context(cafile=ca)
        ) as web:
            assert web.get("/sessions").status_code == 401
            form = web.get("/signin")
            pre = re.search(r'name="csrf" value="([0-9a-f]+)"', form.text)
            assert pre is not None
            signed = web.post(
                "/signin", data={"csrf": pre.group(1), "name": "audrey", "password": PASSWORD}
            )
            cookie = [c for c in signed.headers.get_list("set-cookie") if "bastion_session" in c]
            assert cookie and "Secure" in cookie[0] and "HttpOnly" in cookie[0]
            assert SESSION in web.get("/sessions").text
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
    assert proc.returncode == 0, log.read_text()
    assert PASSWORD not in log.read_text()
