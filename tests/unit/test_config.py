"""bastion.toml: defaults, validation (unknown and ill-typed keys name key and file), home."""

from __future__ import annotations

import tomllib
from datetime import timedelta
from pathlib import Path

import pytest

from bastion.config import (
    DEFAULT_CONFIG_TEXT,
    Config,
    ConfigError,
    GrantsConfig,
    TargetPolicy,
    load_config,
    open_home,
    resolve_home,
)
from bastion.startups import StartupLimits


def write_config(home: Path, text: str) -> Path:
    path = home / "bastion.toml"
    path.write_text(text)
    return path


def config_error(home: Path, text: str) -> str:
    write_config(home, text)
    with pytest.raises(ConfigError) as caught:
        load_config(home)
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_missing_file_means_defaults(tmp_path: Path) -> None:
    config = load_config(tmp_path)
    assert config == Config()
    assert config.grants == GrantsConfig(
        default_ttl=timedelta(minutes=30),
        min_ttl=timedelta(minutes=1),
        max_ttl=timedelta(hours=8),
        clock_skew=timedelta(seconds=60),
    )
    assert config.server.listen_host_port == ("127.0.0.1", 2222)
    assert config.store.path == "state.db"
    assert config.recordings.dir == "recordings"


def test_default_config_text_is_the_defaults(tmp_path: Path) -> None:
    # The commented file `bastion init` writes states exactly the built-in defaults.
    write_config(tmp_path, DEFAULT_CONFIG_TEXT)
    assert load_config(tmp_path) == Config()


def test_values_are_read(tmp_path: Path) -> None:
    write_config(
        tmp_path,
        '[server]\nlisten = "127.0.0.1:2200"\nadvertise = "bastion.example:22"\n'
        '[grants]\ndefault_ttl = "1h"\nmax_ttl = "12h"\nmin_ttl = "90s"\n'
        '[store]\npath = "db/state.db"\n',
    )
    config = load_config(tmp_path)
    assert config.grants.default_ttl == timedelta(hours=1)
    assert config.grants.max_ttl == timedelta(hours=12)
    assert config.grants.min_ttl == timedelta(seconds=90)
    assert config.server.listen_host_port == ("127.0.0.1", 2200)
    assert config.server.advertised_host_port == ("bastion.example", 22)
    assert config.store.path == "db/state.db"


def test_advertise_defaults_to_listen(tmp_path: Path) -> None:
    write_config(tmp_path, '[server]\nlisten = "[::1]:2022"\n')
    config = load_config(tmp_path)
    assert config.server.listen_host_port == ("::1", 2022)
    assert config.server.advertised_host_port == ("::1", 2022)


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[grants]\nmax_tll = '8h'\n", "grants.max_tll"),
        ("[server]\nport = '22'\n", "server.port"),
        ("[server]\nlisten_host_port = '1.2.3.4:5'\n", "server.listen_host_port"),  # a property
        ("[server]\n__doc__ = 'x'\n", "server.__doc__"),
        ("[storage]\npath = 'x'\n", "storage"),
        ("listen = '127.0.0.1:22'\n", "listen"),
        ("[grants.extra]\nx = 1\n", "grants.extra"),
        ("[targets.x]\n__doc__ = 1\n", "targets.x.__doc__"),
        ("[targets.x]\n__doc__ = 'x'\n", "targets.x.__doc__"),
        ("[targets.x]\n__init__ = 'x'\n", "targets.x.__init__"),
        ("[targets.x]\ncommand = ['dd']\n", "targets.x.command"),
    ],
)
def test_unknown_key_names_key_and_file(tmp_path: Path, text: str, key: str) -> None:
    message = config_error(tmp_path, text)
    assert f"'{key}'" in message
    assert "unknown" in message
    assert str(tmp_path / "bastion.toml") in message


@pytest.mark.parametrize(
    ("text", "key", "why"),
    [
        ("[grants]\nmax_ttl = 8\n", "grants.max_ttl", 'must be a duration string like "30m"'),
        ("[grants]\ndefault_ttl = '30 minutes'\n", "grants.default_ttl", "invalid duration"),
        ("[grants]\nmin_ttl = '0s'\n", "grants.min_ttl", "must be longer than zero"),
        ("[server]\nlisten = 2222\n", "server.listen", "must be of type str, got int"),
        ("[server]\nadvertise = true\n", "server.advertise", "must be of type str, got bool"),
        ("[store]\npath = ['a']\n", "store.path", "must be of type str, got list"),
        ("grants = 'x'\n", "grants", "must be a table ([grants])"),
    ],
)
def test_ill_typed_value_names_key_and_file(tmp_path: Path, text: str, key: str, why: str) -> None:
    message = config_error(tmp_path, text)
    assert f"'{key}' in {tmp_path / 'bastion.toml'}" in message
    assert why in message


@pytest.mark.parametrize(
    "grants",
    [
        "min_ttl = '10m'\ndefault_ttl = '5m'",
        "default_ttl = '9h'",
        "max_ttl = '10m'",
        "min_ttl = '9h'",
    ],
)
def test_ttls_must_be_ordered(tmp_path: Path, grants: str) -> None:
    message = config_error(tmp_path, f"[grants]\n{grants}\n")
    assert message == (
        f"'grants' in {tmp_path / 'bastion.toml'}: need min_ttl <= default_ttl <= max_ttl"
    )


def test_ttls_may_be_equal(tmp_path: Path) -> None:
    write_config(tmp_path, "[grants]\nmin_ttl = '5m'\ndefault_ttl = '5m'\nmax_ttl = '5m'\n")
    assert load_config(tmp_path).grants.max_ttl == timedelta(minutes=5)


@pytest.mark.parametrize("key", ["listen", "advertise"])
@pytest.mark.parametrize(
    "value", ["localhost", "127.0.0.1", ":2222", "127.0.0.1:0", "127.0.0.1:65536", "h:ssh"]
)
def test_bad_listen_address_names_key_and_file(tmp_path: Path, key: str, value: str) -> None:
    message = config_error(tmp_path, f'[server]\n{key} = "{value}"\n')
    assert message == (
        f"'server.{key}' in {tmp_path / 'bastion.toml'}: expected HOST:PORT, got {value!r}"
    )


def test_bad_toml_names_file(tmp_path: Path) -> None:
    message = config_error(tmp_path, "[grants\nmax_ttl = '8h'\n")
    assert message.startswith(f"{tmp_path / 'bastion.toml'} is not valid TOML: ")
    with pytest.raises(tomllib.TOMLDecodeError):
        tomllib.loads((tmp_path / "bastion.toml").read_text())


def test_not_utf8_names_file(tmp_path: Path) -> None:
    (tmp_path / "bastion.toml").write_bytes(b"[server]\nlisten = '\xff'\n")
    with pytest.raises(ConfigError, match="is not valid TOML"):
        load_config(tmp_path)


def test_unreadable_config_names_file(tmp_path: Path) -> None:
    (tmp_path / "bastion.toml").mkdir()
    with pytest.raises(ConfigError, match=r"^can't read .*bastion\.toml"):
        load_config(tmp_path)


def test_home_resolution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BASTION_HOME", raising=False)
    monkeypatch.chdir(tmp_path)
    assert resolve_home(None) == tmp_path
    monkeypatch.setenv("BASTION_HOME", str(tmp_path / "from-env"))
    assert resolve_home(None) == tmp_path / "from-env"
    assert resolve_home(str(tmp_path / "explicit")) == tmp_path / "explicit"


def test_home_paths_follow_config(tmp_path: Path) -> None:
    write_config(tmp_path, "[store]\npath = 'var/state.db'\n[recordings]\ndir = 'rec'\n")
    home = open_home(str(tmp_path))
    assert home.store_path == tmp_path / "var" / "state.db"
    assert home.recordings_dir == tmp_path / "rec"
    assert home.ca_key == tmp_path / "keys" / "ca"
    assert home.ca_pub == tmp_path / "keys" / "ca.pub"
    assert home.host_key == tmp_path / "keys" / "host_ed25519"


def test_target_policies_are_read(tmp_path: Path) -> None:
    write_config(
        tmp_path,
        '[targets.prod-web]\ncommands = ["dd"]\nshell_requires_approval = true\n'
        "[targets.prod-db]\n",
    )
    config = load_config(tmp_path)
    web = config.target_policy("prod-web")
    assert web.shell_requires_approval is True
    assert [rule.text for rule in config.command_rules("prod-web")] == ["dd"]
    assert config.target_policy("prod-db") == TargetPolicy()


@pytest.mark.parametrize(
    ("text", "key", "why"),
    [
        ("[targets.x]\nshell_requires_approval = 'yes'\n", "targets.x.shell_requires_approval",
         "must be of type bool, got str"),
        ("[targets.x]\ncommands = 'dd'\n", "targets.x.commands", "must be a list of command rules"),
        ("[targets]\nx = 1\n", "targets.x", "must be a table"),
    ],
)  # fmt: skip
def test_ill_typed_target_policy_names_key_and_file(
    tmp_path: Path, text: str, key: str, why: str
) -> None:
    message = config_error(tmp_path, text)
    assert f"'{key}' in {tmp_path / 'bastion.toml'}" in message
    assert why in message


# -- operations: shutdown grace, log format, metrics --------------------------------------


def test_operations_defaults(tmp_path: Path) -> None:
    config = load_config(tmp_path)
    assert config.server.shutdown_grace == timedelta(seconds=10)
    assert config.server.log_format == "text"
    assert config.server.event_loop == "uvloop"
    assert config.server.max_sessions == 10
    assert config.server.max_startups == 100
    assert config.metrics.listen == ""
    assert config.metrics.allow_remote is False


def test_startup_limits_default_to_a_hard_cap_and_ten_per_address(tmp_path: Path) -> None:
    server = load_config(tmp_path).server
    assert (server.per_source_max_startups, server.per_source_netblock) == (10, "32:128")
    assert server.startup_limits == StartupLimits(
        begin=100, rate=100, full=100, per_source=10, ipv4_prefix=32, ipv6_prefix=128
    )
    assert "per_source_max_startups = 10\n" in DEFAULT_CONFIG_TEXT
    assert 'per_source_netblock = "32:128"\n' in DEFAULT_CONFIG_TEXT


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("max_startups = 20", StartupLimits(20, 100, 20, 10)),
        ('max_startups = "20"', StartupLimits(20, 100, 20, 10)),
        ('max_startups = "10:30:100"', StartupLimits(10, 30, 100, 10)),
        (
            'per_source_max_startups = 3\nper_source_netblock = "24:64"',
            StartupLimits(100, 100, 100, 3, 24, 64),
        ),
        ('per_source_netblock = "16"', StartupLimits(100, 100, 100, 10, 16, 128)),
    ],
)
def test_startup_limits_are_read(tmp_path: Path, text: str, expected: StartupLimits) -> None:
    write_config(tmp_path, f"[server]\n{text}\n")
    assert load_config(tmp_path).server.startup_limits == expected


def test_operations_values_are_read(tmp_path: Path) -> None:
    write_config(
        tmp_path,
        '[server]\nshutdown_grace = "3s"\nlog_format = "json"\nevent_loop = "asyncio"\n'
        "max_sessions = 4\nmax_startups = 20\n"
        '[metrics]\nlisten = "127.0.0.1:9464"\n',
    )
    config = load_config(tmp_path)
    assert (config.server.max_sessions, config.server.max_startups) == (4, 20)
    assert config.server.shutdown_grace == timedelta(seconds=3)
    assert config.server.log_format == "json"
    assert config.server.event_loop == "asyncio"
    assert config.metrics.listen == "127.0.0.1:9464"


@pytest.mark.parametrize("listen", ["127.0.0.1:9464", "[::1]:9464", "localhost:9", "127.8.0.1:1"])
def test_metrics_on_loopback_is_accepted(tmp_path: Path, listen: str) -> None:
    write_config(tmp_path, f'[metrics]\nlisten = "{listen}"\n')
    assert load_config(tmp_path).metrics.listen == listen


@pytest.mark.parametrize("listen", ["0.0.0.0:9464", "10.1.2.3:9464", "metrics.example:9464"])
def test_metrics_off_loopback_is_refused(tmp_path: Path, listen: str) -> None:
    message = config_error(tmp_path, f'[metrics]\nlisten = "{listen}"\n')
    assert "'metrics.listen'" in message
    assert "not a loopback address" in message
    assert "allow_remote" in message


def test_metrics_off_loopback_with_allow_remote(tmp_path: Path) -> None:
    write_config(tmp_path, '[metrics]\nlisten = "0.0.0.0:9464"\nallow_remote = true\n')
    assert load_config(tmp_path).metrics.allow_remote is True


@pytest.mark.parametrize(
    ("text", "key", "why"),
    [
        ('[server]\nlog_format = "xml"\n', "server.log_format", '"text" or "json"'),
        ("[server]\nlog_format = 1\n", "server.log_format", "type str"),
        ('[server]\nevent_loop = "trio"\n', "server.event_loop", '"uvloop" or "asyncio"'),
        ('[server]\nevent_loop = "UVLOOP"\n', "server.event_loop", '"uvloop" or "asyncio"'),
        ('[server]\nshutdown_grace = "0s"\n', "server.shutdown_grace", "longer than zero"),
        ('[server]\nshutdown_grace = "1h"\n', "server.shutdown_grace", "at most 10m"),
        ("[server]\nshutdown_grace = 10\n", "server.shutdown_grace", "duration"),
        ("[server]\nmax_sessions = 0\n", "server.max_sessions", "between 1 and 1000"),
        ("[server]\nmax_sessions = 1001\n", "server.max_sessions", "between 1 and 1000"),
        ('[server]\nmax_sessions = "10"\n', "server.max_sessions", "type int"),
        ("[server]\nmax_startups = 0\n", "server.max_startups", "between 1 and 100000"),
        ('[server]\nmax_startups = "10:30"\n', "server.max_startups", "start:rate:full"),
        ('[server]\nmax_startups = "60:30:10"\n', "server.max_startups", "start must be"),
        ('[server]\nmax_startups = "10:0:60"\n', "server.max_startups", "rate must be"),
        ("[server]\nmax_startups = 1.5\n", "server.max_startups", "type int"),
        ("[server]\nmax_startups = true\n", "server.max_startups", "type int"),
        (
            "[server]\nper_source_max_startups = 0\n",
            "server.per_source_max_startups",
            "between 1 and 100000",
        ),
        (
            '[server]\nper_source_max_startups = "10"\n',
            "server.per_source_max_startups",
            "type int",
        ),
        ('[server]\nper_source_netblock = "33"\n', "server.per_source_netblock", "0 and 32"),
        (
            '[server]\nper_source_netblock = "32:129"\n',
            "server.per_source_netblock",
            "0 and 128",
        ),
        ('[server]\nper_source_netblock = "/24"\n', "server.per_source_netblock", '"32:128"'),
        ("[server]\nper_source_netblock = 24\n", "server.per_source_netblock", "type str"),
        ('[metrics]\nlisten = "nope"\n', "metrics.listen", "HOST:PORT"),
        ('[metrics]\nallow_remote = "yes"\n', "metrics.allow_remote", "type bool"),
        ("[metrics]\nport = 9464\n", "metrics.port", "unknown key"),
    ],
)
def test_bad_operations_settings_name_key_and_file(
    tmp_path: Path, text: str, key: str, why: str
) -> None:
    message = config_error(tmp_path, text)
    assert f"'{key}'" in message
    assert why in message
    assert str(tmp_path / "bastion.toml") in message


def test_store_url_and_node_timing_are_read(tmp_path: Path) -> None:
    write_config(
        tmp_path,
        '[server]\nheartbeat = "1s"\nnode_timeout = "5s"\n'
        '[store]\nurl = "postgresql://bastion:pw@db.internal:5432/bastion?sslmode=require"\n',
    )
    config = load_config(tmp_path)
    assert config.store.url.startswith("postgresql://bastion:pw@db.internal")
    assert (config.server.heartbeat, config.server.node_timeout) == (
        timedelta(seconds=1),
        timedelta(seconds=5),
    )


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("mysql://u:hunter2@h/db", "must be a postgresql:// URL (got scheme 'mysql')"),
        ("u:hunter2@h/db", "must be a postgresql:// URL"),
        ("postgresql://u:hunter2@h:99x/db", "is not a valid URL"),
        ("postgresql://u:hunter2@h:5432", "must name a database"),
    ],
)
def test_bad_store_url_is_refused_without_its_password(tmp_path: Path, url: str, why: str) -> None:
    message = config_error(tmp_path, f'[store]\nurl = "{url}"\n')
    assert message.startswith(f"'store.url' in {tmp_path / 'bastion.toml'} ")
    assert why in message
    assert "hunter2" not in message


def test_store_path_and_url_exclude_each_other(tmp_path: Path) -> None:
    message = config_error(tmp_path, '[store]\npath = "s.db"\nurl = "postgresql://h/db"\n')
    assert "set either 'store.path' (SQLite) or 'store.url'" in message


def test_node_timeout_must_exceed_heartbeats(tmp_path: Path) -> None:
    message = config_error(tmp_path, '[server]\nheartbeat = "5s"\nnode_timeout = "6s"\n')
    assert "node_timeout >= 2 x heartbeat" in message
