"""bastion.toml's [web] section: defaults, and every way it can be wrong (one clear line)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from bastion.config import ConfigError, WebConfig, check_web_listen, is_loopback, load_config
from tests.unit.test_config import config_error


def test_off_by_default(tmp_path: Path) -> None:
    web = load_config(tmp_path).web
    assert web == WebConfig()
    assert web.listen == ""
    assert web.session_ttl == timedelta(hours=12)


def test_a_full_section_parses(tmp_path: Path) -> None:
    (tmp_path / "bastion.toml").write_text(
        '[web]\nlisten = "0.0.0.0:8443"\ntls_cert = "web.crt"\ntls_key = "web.key"\n'
        'session_ttl = "1h"\nlogin_link_ttl = "5m"\nsignin_limit = 3\nsignin_window = "1m"\n'
    )
    web = load_config(tmp_path).web
    assert (web.listen, web.tls_cert, web.tls_key) == ("0.0.0.0:8443", "web.crt", "web.key")
    assert (web.session_ttl, web.login_link_ttl) == (timedelta(hours=1), timedelta(minutes=5))
    assert (web.signin_limit, web.signin_window) == (3, timedelta(minutes=1))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[web]\nlisten = "0.0.0.0:8443"\n', "0.0.0.0 is not a loopback address"),
        ('[web]\nlisten = "10.1.2.3:443"\n', "listens off loopback only with TLS"),
        ('[web]\nlisten = "8443"\n', "'web.listen' in"),
        ("[web]\nlisten = 8443\n", "must be of type str, got int"),
        ('[web]\ntls_cert = "c.pem"\n', "give both tls_cert and tls_key, or neither"),
        ('[web]\ntls_key = "k.pem"\n', "give both tls_cert and tls_key, or neither"),
        ('[web]\nsession_ttl = "1m"\n', "'web.session_ttl' in"),
        ('[web]\nsession_ttl = "30d"\n', "must be between 5m and 7d"),
        ("[web]\nsession_ttl = 3600\n", 'must be a duration string like "30m"'),
        ('[web]\nlogin_link_ttl = "2d"\n', "'web.login_link_ttl' in"),
        ("[web]\nsignin_limit = 0\n", "'web.signin_limit' in"),
        ("[web]\nsignin_limit = true\n", "must be of type int, got bool"),
        ('[web]\nsignin_window = "0s"\n', "'web.signin_window' in"),
        ("[web]\nport = 8443\n", "unknown key 'web.port'"),
        ('web = "127.0.0.1:8443"\n', "'web' in"),
    ],
)
def test_bad_web_section_is_one_clear_error(tmp_path: Path, text: str, expected: str) -> None:
    message = config_error(tmp_path, text)
    assert expected in message
    assert str(tmp_path / "bastion.toml") in message


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.9.9.9", True),
        ("::1", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("192.168.1.2", False),
        ("web.example.com", False),
    ],
)
def test_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_off_loopback_needs_tls() -> None:
    with pytest.raises(ConfigError, match=r"--listen: 0\.0\.0\.0 is not a loopback address"):
        check_web_listen("0.0.0.0:8443", False, "--listen")
    assert check_web_listen("0.0.0.0:8443", True, "--listen") == ("0.0.0.0", 8443)
    assert check_web_listen("[::1]:8443", False, "--listen") == ("::1", 8443)
