"""`bastion init`: the home it creates, idempotence, CA key protection and passphrase."""

from __future__ import annotations

import base64
import getpass
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from bastion.cli import cli
from bastion.config import Config, load_config
from tests.cli.conftest import (
    CONFIG,
    KEY_MATERIAL,
    add_ssh_target,
    assert_error,
    audit_events,
    make_key,
    mode,
    ok,
    pub,
    run,
    snapshot,
)

HOME_LAYOUT = {
    "keys": 0o700,
    "keys/ca": 0o600,
    "keys/ca.pub": 0o644,
    "keys/host_ed25519": 0o600,
    "keys/host_ed25519.pub": 0o644,
    "recordings": 0o700,
    "bastion.toml": 0o644,
    "state.db": 0o600,
}


def public_key_of(private_key: Path, passphrase: str = "") -> str:
    """What ssh-keygen itself derives from a private key (fails if it can't load it)."""
    result = subprocess.run(
        ["ssh-keygen", "-y", "-P", passphrase, "-f", str(private_key)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def snapshot_files(root: Path) -> dict[str, bytes | None]:
    """Every file under `root` with its content (for homes without a state store)."""
    return {
        str(p.relative_to(root)): None if p.is_dir() else p.read_bytes()
        for p in sorted(root.rglob("*"))
    }


def test_init_creates_the_home(tmp_home: Path) -> None:
    result = ok(tmp_home, "init")

    for relative, expected_mode in HOME_LAYOUT.items():
        assert oct(mode(tmp_home / relative)) == oct(expected_mode), relative
    for relative in ("keys/", "keys/ca", "keys/ca.pub", "keys/host_ed25519", "bastion.toml"):
        assert f"  created {relative}\n" in result.stdout
    # The keys are real OpenSSH Ed25519 keys and the .pub files match them.
    ca_pub = (tmp_home / "keys/ca.pub").read_text().split()
    assert ca_pub[0] == "ssh-ed25519"
    assert public_key_of(tmp_home / "keys/ca").split()[:2] == ca_pub[:2]
    host_pub = (tmp_home / "keys/host_ed25519.pub").read_text().split()
    assert public_key_of(tmp_home / "keys/host_ed25519").split()[:2] == host_pub[:2]
    assert f"CA public key (for sshd TrustedUserCAKeys): {' '.join(ca_pub[:2])}" in result.stdout
    # The config is the commented default, and loads as the defaults.
    assert (tmp_home / "bastion.toml").read_text().startswith("# bastion.toml")
    assert load_config(tmp_home) == Config()
    [event] = audit_events(tmp_home)
    assert (event["action"], event["actor"]) == ("ca.initialized", getpass.getuser())
    assert event["details"]["encrypted"] is False
    assert event["details"]["ca_fingerprint"].startswith("SHA256:")


def test_init_is_idempotent_and_keeps_keys(tmp_home: Path) -> None:
    ok(tmp_home, "init")
    (tmp_home / "bastion.toml").write_text("[grants]\nmax_ttl = '4h'\n")
    before = snapshot(tmp_home)

    result = ok(tmp_home, "init")

    assert snapshot(tmp_home) == before  # keys byte-identical, config kept, no new event
    assert "created" not in result.stdout
    assert "  kept    keys/ca\n" in result.stdout
    assert "  kept    keys/host_ed25519\n" in result.stdout
    assert "  kept    state.db\n" in result.stdout
    for relative, expected_mode in HOME_LAYOUT.items():
        assert mode(tmp_home / relative) == expected_mode, relative


def test_init_restores_a_missing_public_key(tmp_home: Path) -> None:
    ok(tmp_home, "init")
    ca_pub = (tmp_home / "keys/ca.pub").read_text().split()[:2]
    private = (tmp_home / "keys/ca").read_bytes()
    (tmp_home / "keys/ca.pub").unlink()

    result = ok(tmp_home, "init")

    assert "  created keys/ca.pub\n" in result.stdout
    assert (tmp_home / "keys/ca.pub").read_text().split()[:2] == ca_pub
    assert (tmp_home / "keys/ca").read_bytes() == private
    assert len(audit_events(tmp_home)) == 1


def test_home_from_environment_then_current_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env_home = tmp_path / "env-home"
    result = CliRunner().invoke(cli, ["init"], env={"BASTION_HOME": str(env_home)})
    assert result.exit_code == 0, result.output
    assert (env_home / "keys/ca").is_file()

    cwd_home = tmp_path / "cwd-home"
    cwd_home.mkdir()
    monkeypatch.chdir(cwd_home)
    result = CliRunner().invoke(cli, ["init"])
    assert result.exit_code == 0, result.output
    assert (cwd_home / "keys/ca").is_file()


@pytest.mark.parametrize("ca_mode", [0o644, 0o640, 0o604, 0o660])
def test_init_refuses_a_ca_key_others_can_read(tmp_home: Path, ca_mode: int) -> None:
    ok(tmp_home, "init")
    ca = tmp_home / "keys/ca"
    ca.chmod(ca_mode)
    before = snapshot(tmp_home)

    line = assert_error(run(tmp_home, "init"), KEY_MATERIAL, str(ca))

    assert line == (
        f"bastion: error: {ca} has permissions {ca_mode:04o}, readable by others;"
        f" run `chmod 600 {ca}`"
    )
    assert snapshot(tmp_home) == before


def test_grant_issue_refuses_a_ca_key_others_can_read(tmp_home: Path, tmp_path: Path) -> None:
    ok(tmp_home, "init")
    add_ssh_target(tmp_home, "prod-web")
    key = make_key(tmp_path / "agent")
    (tmp_home / "keys/ca").chmod(0o644)
    before = snapshot(tmp_home, key.parent)

    result = run(
        tmp_home,
        *("grant", "issue", "--agent", "bot", "--target", "prod-web", "--task", "t-1"),
        *("--pubkey", str(pub(key))),
    )

    assert_error(result, KEY_MATERIAL, "readable by others; run `chmod 600")
    assert snapshot(tmp_home, key.parent) == before


def test_init_with_a_broken_config_creates_nothing(tmp_home: Path) -> None:
    (tmp_home / "bastion.toml").write_text("[grants\n")

    assert_error(run(tmp_home, "init"), CONFIG, f"{tmp_home / 'bastion.toml'} is not valid TOML")

    assert sorted(p.name for p in tmp_home.iterdir()) == ["bastion.toml"]


# -- passphrase ----------------------------------------------------------------

PASSPHRASE = {"BASTION_CA_PASSPHRASE": "correct horse battery staple"}


def test_passphrase_encrypts_the_ca(tmp_home: Path) -> None:
    ok(tmp_home, "init", env=PASSPHRASE)
    ca = tmp_home / "keys/ca"

    # OpenSSH's private key format names its cipher and KDF in the clear.
    lines = ca.read_text().splitlines()
    assert lines[0] == "-----BEGIN OPENSSH PRIVATE KEY-----"
    blob = base64.b64decode("".join(lines[1:-1]))
    assert blob.startswith(b"openssh-key-v1\0")
    assert b"aes256-ctr" in blob
    assert b"bcrypt" in blob
    # Real ssh-keygen can't open it without the passphrase, and can with it.
    refused = subprocess.run(
        ["ssh-keygen", "-y", "-P", "", "-f", str(ca)], capture_output=True, text=True
    )
    assert refused.returncode != 0
    ca_pub = (tmp_home / "keys/ca.pub").read_text().split()[:2]
    opened = public_key_of(ca, PASSPHRASE["BASTION_CA_PASSPHRASE"])
    assert opened.split()[:2] == ca_pub
    assert audit_events(tmp_home)[0]["details"]["encrypted"] is True
    # The host key is for the unattended listener: not encrypted.
    public_key_of(tmp_home / "keys/host_ed25519")
    # Idempotent with the passphrase too.
    before = snapshot(tmp_home)
    ok(tmp_home, "init", env=PASSPHRASE)
    assert snapshot(tmp_home) == before


def test_without_passphrase_init_leaves_ca_unencrypted(tmp_home: Path) -> None:
    ok(tmp_home, "init")
    blob = base64.b64decode("".join((tmp_home / "keys/ca").read_text().splitlines()[1:-1]))
    assert b"aes256-ctr" not in blob
    assert b"\0\0\0\x04none" in blob


@pytest.fixture
def encrypted_home(tmp_home: Path) -> Path:
    ok(tmp_home, "init", env=PASSPHRASE)
    add_ssh_target(tmp_home, "prod-web")
    return tmp_home


def issue_args(key: Path) -> list[str]:
    return [
        *("grant", "issue", "--agent", "bot", "--target", "prod-web", "--task", "t-1"),
        *("--pubkey", str(pub(key))),
    ]


def test_encrypted_ca_signs_with_the_passphrase(encrypted_home: Path, tmp_path: Path) -> None:
    key = make_key(tmp_path / "agent")
    ok(encrypted_home, *issue_args(key), env=PASSPHRASE)
    assert (tmp_path / "agent/id_ed25519-cert.pub").is_file()


def test_wrong_passphrase_at_grant_issue(encrypted_home: Path, tmp_path: Path) -> None:
    key = make_key(tmp_path / "agent")
    before = snapshot(encrypted_home, key.parent)

    result = run(encrypted_home, *issue_args(key), env={"BASTION_CA_PASSPHRASE": "wrong"})

    line = assert_error(result, KEY_MATERIAL, "wrong passphrase")
    assert line == f"bastion: error: wrong passphrase for {encrypted_home / 'keys/ca'}"
    assert snapshot(encrypted_home, key.parent) == before


def test_missing_passphrase_at_grant_issue(encrypted_home: Path, tmp_path: Path) -> None:
    key = make_key(tmp_path / "agent")
    before = snapshot(encrypted_home, key.parent)

    line = assert_error(run(encrypted_home, *issue_args(key)), KEY_MATERIAL, "encrypted")

    assert line == (
        f"bastion: error: {encrypted_home / 'keys/ca'} is encrypted:"
        " set BASTION_CA_PASSPHRASE to its passphrase"
    )
    assert snapshot(encrypted_home, key.parent) == before


def test_wrong_passphrase_at_init(encrypted_home: Path) -> None:
    before = snapshot(encrypted_home)
    assert_error(
        run(encrypted_home, "init", env={"BASTION_CA_PASSPHRASE": "wrong"}),
        KEY_MATERIAL,
        "wrong passphrase for",
    )
    assert snapshot(encrypted_home) == before


def test_passphrase_given_for_an_unencrypted_ca(tmp_home: Path, tmp_path: Path) -> None:
    ok(tmp_home, "init")
    add_ssh_target(tmp_home, "prod-web")
    key = make_key(tmp_path / "agent")
    before = snapshot(tmp_home, key.parent)

    result = run(tmp_home, *issue_args(key), env=PASSPHRASE)

    assert_error(result, KEY_MATERIAL, "is not encrypted; unset BASTION_CA_PASSPHRASE")
    assert snapshot(tmp_home, key.parent) == before


def test_commands_need_an_initialized_home(tmp_home: Path) -> None:
    for command in (("grant", "list"), ("target", "list"), ("audit", "verify")):
        line = assert_error(run(tmp_home, *command), 3, "run `bastion init` first")
        assert line == f"bastion: error: no bastion state in {tmp_home}: run `bastion init` first"
    assert list(tmp_home.iterdir()) == []


@pytest.mark.parametrize(
    ("damage", "fragment"),
    [
        ("missing", "keys/ca does not exist (run `bastion init`)"),
        ("garbage", "keys/ca is not an OpenSSH private key"),
        ("rsa", "keys/ca is not an Ed25519 key"),
    ],
)
def test_unusable_ca_key_at_grant_issue(
    tmp_home: Path, tmp_path: Path, damage: str, fragment: str
) -> None:
    ok(tmp_home, "init")
    add_ssh_target(tmp_home, "prod-web")
    key = make_key(tmp_path / "agent")
    ca = tmp_home / "keys/ca"
    ca.unlink()
    if damage == "garbage":
        ca.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\nbm90IGEga2V5\n")
    elif damage == "rsa":
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "rsa", "-b", "2048", "-N", "", "-f", str(ca)], check=True
        )
    if ca.exists():
        ca.chmod(0o600)
    before = snapshot(tmp_home, key.parent)

    assert_error(run(tmp_home, *issue_args(key)), KEY_MATERIAL, fragment)

    assert snapshot(tmp_home, key.parent) == before


@pytest.fixture
def stray_host_pub(tmp_home: Path, tmp_path: Path) -> Path:
    """A home whose keys/ holds only a leftover host_ed25519.pub (no private key)."""
    (tmp_home / "keys").mkdir(mode=0o700)
    stray = tmp_home / "keys/host_ed25519.pub"
    stray.write_text(pub(make_key(tmp_path / "other")).read_text())
    return stray


def test_failed_init_leaves_keys_as_they_were(tmp_home: Path, stray_host_pub: Path) -> None:
    before = snapshot_files(tmp_home)

    assert_error(run(tmp_home, "init"), 4, f"{stray_host_pub} already exists")

    assert snapshot_files(tmp_home) == before


def test_ca_creation_is_audited_after_a_failed_init(tmp_home: Path, stray_host_pub: Path) -> None:
    run(tmp_home, "init")
    stray_host_pub.unlink()

    ok(tmp_home, "init")

    assert [e["action"] for e in audit_events(tmp_home)] == ["ca.initialized"]


def test_public_ca_key_without_the_ca_is_refused(tmp_home: Path, tmp_path: Path) -> None:
    (tmp_home / "keys").mkdir(mode=0o700)
    stray = tmp_home / "keys/ca.pub"
    stray.write_text(pub(make_key(tmp_path / "other")).read_text())
    before = snapshot_files(tmp_home)

    line = assert_error(run(tmp_home, "init"), 4, f"{stray} already exists")

    assert f"but {tmp_home / 'keys/ca'} does not" in line
    assert snapshot_files(tmp_home) == before


@pytest.mark.parametrize("name", ["ca.pub", "host_ed25519.pub"])
def test_public_key_that_does_not_match_its_key(tmp_home: Path, tmp_path: Path, name: str) -> None:
    ok(tmp_home, "init")
    wrong = tmp_home / "keys" / name
    wrong.write_text(pub(make_key(tmp_path / "other")).read_text())
    before = snapshot(tmp_home)

    line = assert_error(run(tmp_home, "init"), KEY_MATERIAL, f"{wrong} does not match")

    assert line.startswith(f"bastion: error: {wrong} does not match {wrong.with_suffix('')}")
    assert snapshot(tmp_home) == before


@pytest.mark.parametrize("name", ["ca.pub", "host_ed25519.pub"])
def test_public_key_file_that_is_not_a_key(tmp_home: Path, name: str) -> None:
    ok(tmp_home, "init")
    broken = tmp_home / "keys" / name
    broken.write_text("ssh-ed25519 not-base64\n")
    before = snapshot(tmp_home)

    assert_error(run(tmp_home, "init"), KEY_MATERIAL, f"{broken}: not an OpenSSH public key")

    assert snapshot(tmp_home) == before


def test_a_failure_after_creating_keys_removes_them(tmp_home: Path) -> None:
    # The store comes last; when it can't be created, the keys made before it go again.
    (tmp_home / "bastion.toml").write_text('[store]\npath = "bastion.toml/state.db"\n')
    before = snapshot_files(tmp_home)

    assert_error(run(tmp_home, "init"), 7, "can't open state store")

    assert snapshot_files(tmp_home) == before


def test_a_ca_brought_along_is_audited_once(tmp_home: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "old-home"
    ok(elsewhere, "init")
    (tmp_home / "keys").mkdir(mode=0o700)
    for name in ("ca", "ca.pub", "host_ed25519", "host_ed25519.pub"):
        source = elsewhere / "keys" / name
        (tmp_home / "keys" / name).write_bytes(source.read_bytes())
        (tmp_home / "keys" / name).chmod(mode(source))

    result = ok(tmp_home, "init")
    ok(tmp_home, "init")

    assert "  kept    keys/ca\n" in result.stdout
    [event] = audit_events(tmp_home)
    assert event["action"] == "ca.initialized"
    assert (
        event["details"]["ca_fingerprint"]
        == audit_events(elsewhere)[0]["details"]["ca_fingerprint"]
    )


def test_unknown_key_in_a_target_policy(tmp_home: Path) -> None:
    config = tmp_home / "bastion.toml"
    config.write_text('[targets.prod-web]\n__doc__ = "x"\n')

    line = assert_error(run(tmp_home, "init"), CONFIG, "'targets.prod-web.__doc__'")

    assert line == f"bastion: error: unknown key 'targets.prod-web.__doc__' in {config}"
    assert sorted(p.name for p in tmp_home.iterdir()) == ["bastion.toml"]
