"""Small pure parts of operations: refusal categories, the notify environment, JSON lines."""

from __future__ import annotations

import json
import logging

import pytest

from bastion.logs import JsonFormatter
from bastion.metrics import refusal_category
from bastion.sdnotify import SystemdNotifier


@pytest.mark.parametrize(
    ("reasons", "category"),
    [
        ("a plain key is not accepted: a grant certificate is required", "plain-key"),
        ("a plain key is not accepted: a grant certificate is required; grant g-1 is revoked",
         "revoked"),
        ("certificate has expired", "expired"),
        ("grant g-1 is expired", "expired"),
        ("certificate is not signed by this bastion's CA", "unknown-ca"),
        ("no grant matches the certificate's key id 'x'", "unknown-grant"),
        ("login 'db' is not a principal of the certificate", "wrong-target"),
        ("client address not in source-address 10.0.0.0/8", "source-address"),
        ("something new", "other"),
    ],
)  # fmt: skip
def test_refusal_reasons_reduce_to_a_bounded_category(reasons: str, category: str) -> None:
    assert refusal_category(reasons) == category


def test_notifier_reads_systemds_environment() -> None:
    env = {"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": "500000", "WATCHDOG_PID": "42"}
    assert SystemdNotifier.from_env(env, 42).watchdog_usec == 500000
    assert SystemdNotifier.from_env(env, 43).watchdog_usec is None  # meant for another process
    assert SystemdNotifier.from_env({"WATCHDOG_USEC": "x"}, 42).watchdog_usec is None
    off = SystemdNotifier.from_env({}, 42)
    assert not off.enabled and off.send("READY=1") is False


def test_notifier_reports_an_unreachable_socket(tmp_path: object) -> None:
    notifier = SystemdNotifier(f"{tmp_path}/nobody-listens")
    assert notifier.send("READY=1") is False
    notifier.close()


def test_json_line_has_fields_and_extras() -> None:
    record = logging.makeLogRecord(
        {"name": "bastion.x", "levelno": 20, "levelname": "INFO", "msg": "a %s", "args": ("b",),
         "created": 0.5, "session": "s-1"}
    )  # fmt: skip
    line = JsonFormatter().format(record)
    assert "\n" not in line
    assert json.loads(line) == {
        "ts": "1970-01-01T00:00:00.500Z",
        "level": "info",
        "logger": "bastion.x",
        "msg": "a b",
        "session": "s-1",
    }
