"""bastion.cmdpolicy: tables of commands each way, rule parsing, then properties."""

from __future__ import annotations

import shlex
import time

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from bastion.cmdpolicy import (
    DEFAULT_RULES,
    MAX_COMMAND_LENGTH,
    Allowed,
    CommandRule,
    NeedsApproval,
    classify_command,
    parse_rule,
)

ALLOWED = [
    "ls -la",
    "rm file.txt",
    "rm -f file.txt",
    "rm -i -v a b",
    "rm -- -r",
    'rm -f -- "$f"',
    "grep -r foo .",
    "grep -R foo . | xargs grep bar",
    "systemctl status nginx",
    "systemctl restart nginx",
    "systemctl restart stop",
    "systemctl --no-pager status nginx",
    'echo "rm -rf /"',
    "echo 'shutdown -h now'",
    "echo rm -rf /",
    "echo $'rm -rf'",
    "printf '%s\\n' \"$(date)\"",
    'psql -c "delete from t where id=1"',
    "psql -c 'select 1'",
    "psql -c 'UPDATE t SET a = 1 WHERE id = 2'",
    "psql -d app -At -c 'select count(*) from users'",
    "kill 1234",
    "kill -15 1234",
    "kill -TERM 1234",
    "kill -l 9",
    "kill -- $PID",
    "iptables -L -n",
    "chmod 755 x",
    "chmod u-r x",
    "chown a:b x",
    "find . -name '*.log'",
    "find . -name x -exec ls -l {} \\;",
    "man dd",
    "which shutdown",
    "ls /sbin/reboot",
    "command -v reboot",
    "mkswap --help",
    "cat <<'EOF'\nrm -rf /\nEOF\nls",
    "cat <<-EOF\n\thello\n\tEOF",
    "echo hi # rm -rf /",
    "echo a#b",
    "[ -f x ] && ls",
    "[[ -n $x ]] && echo yes",
    "cd /tmp && ls",
    "a=1 b=2",
    "arr=(a b c); echo ${arr[0]}",
    "echo $((1 + 2))",
    "ls 2>&1 >/dev/null | cat",
    "exec 3>&1",
    "cat < /etc/hosts &> /dev/null",
    "ls |& cat",
    "time -p ls",
    "sudo -u root systemctl status nginx",
    "sudo -v",
    "xargs grep foo",
    "nohup ./server --port 8080 &",
    "bash -c 'ls -la'",
    "sh -c \"echo 'hi'\"",
    'for f in *.txt; do wc -l "$f"; done',
    'while read -r line; do echo "$line"; done < file',
    "if [ -d x ]; then echo yes; else echo no; fi",
    "f() { ls; }; f",
    "trap - INT",
    "trap '' INT",
    "alias ll='ls -l'",
    "chroot --userspec=a:b /mnt ls",
    "df -h",
    "",
    "   ",
]

# (command, the start of the expected reason)
NEEDS_APPROVAL = [
    ("cd /tmp && rm -rf x", "rm -r: rm -rf x"),
    ("rm -rf /tmp/x", "rm -r: rm -rf /tmp/x"),
    ("rm -fr x", "rm -r: "),
    ("rm -r -f x", "rm -r: "),
    ("rm -R x", "rm -R: "),
    ("rm -Rf x", "rm -R: "),
    ("rm --recursive x", "rm --recursive: "),
    ("rm --rec x", "rm --recursive: "),
    ("rm -v x -r", "rm -r: "),
    ("/bin/rm -rf x", "rm -r: /bin/rm -rf x"),
    ("'rm' -r x", "rm -r: "),
    ('"/usr/bin/rm" -r x', "rm -r: "),
    ("r\\m -r x", "rm -r: "),
    ("rm '-r' x", "rm -r: "),
    ("rm -\\r x", "rm -r: "),
    ("sudo -u root rm -fr /", "rm -r: rm -fr /"),
    ("sudo -E -u root -- rm -r /", "rm -r: "),
    ("sudo --user=root rm -r x", "rm -r: "),
    ("sudo --us root rm -r x", "rm -r: "),
    ("sudo FOO=1 rm -r x", "rm -r: "),
    ("sudo -s rm -r x", "rm -r: "),
    ("doas -u root rm -r x", "rm -r: "),
    ("FOO=1 env BAR=2 nice -n 5 rm -R x", "rm -R: rm -R x"),
    ("env -i PATH=/bin rm -r x", "rm -r: "),
    ("env -u HOME -- rm -r x", "rm -r: "),
    ("/usr/bin/env rm -r x", "rm -r: "),
    ("nice rm -r x", "rm -r: "),
    ("nice -5 rm -r x", "rm -r: "),
    ("nice -n5 rm -r x", "rm -r: "),
    ("nohup rm -r x &", "rm -r: "),
    ("timeout 5 dd if=/dev/zero of=/dev/sda", "dd: dd if=/dev/zero of=/dev/sda"),
    ("timeout -s KILL -k 5 10s dd if=x", "dd: "),
    ("timeout --signal=KILL 5s dd", "dd: "),
    ("stdbuf -oL -e 0 pkill x", "pkill: "),
    ("ionice -c 3 -n 7 truncate -s 0 f", "truncate: "),
    ("time -p killall y", "killall: "),
    ("command chown -R a b", "chown -R: "),
    ("exec -a x chmod -R 777 /", "chmod -R: "),
    ("builtin eval x", "opaque: eval"),
    ("busybox rm -rf x", "rm -r: "),
    ("setsid reboot", "reboot: "),
    ("sudo sudo sudo rm -r x", "rm -r: "),
    ("bash -c 'systemctl stop nginx'", "systemctl stop: systemctl stop nginx"),
    ("bash -lc 'poweroff'", "poweroff: "),
    ("bash -o pipefail -c 'halt'", "halt: "),
    ("bash -e -c -- 'halt'", "halt: "),
    ("sh -c \"sudo sh -c 'reboot'\"", "reboot: reboot"),
    ("dash -c 'ls; reboot'", "reboot: "),
    ("zsh -c 'reboot'", "reboot: "),
    ("su -c 'rm -rf /' root", "rm -r: "),
    ("su - root --command='reboot'", "reboot: "),
    ("trap 'rm -rf /' EXIT", "rm -r: "),
    ("trap -- 'reboot' EXIT", "reboot: "),
    ("alias x='rm -rf /'", "rm -r: "),
    ("coproc reboot", "reboot: "),
    ("coproc NAME { reboot; }", "reboot: "),
    ("pkexec --user root reboot", "reboot: "),
    ("chroot /mnt reboot", "reboot: "),
    ('bash -c "re\\\nboot"', "reboot: "),
    ("find . | xargs rm -rf", "rm -r: rm -rf"),
    ("find . -print0 | xargs -0 -n 1 -P 4 rm -r", "rm -r: "),
    ("xargs rm", "rm -r (arguments known only at run time): "),
    ("xargs kill", "kill -9 (arguments known only at run time): "),
    ("xargs -I{} rm {}", "rm -r (arguments known only at run time): "),
    ("find . -exec rm -rf {} \\;", "rm -r: rm -rf {}"),
    ("find . -execdir rm -r {} +", "rm -r: "),
    ("find / -name '*.tmp' -delete", "find -delete: "),
    ("echo $(shutdown -h now)", "shutdown: shutdown -h now"),
    ("echo `reboot`", "reboot: "),
    ('echo "$(echo "$(halt)")"', "halt: "),
    ("ls `echo \\`reboot\\``", "reboot: "),
    ("echo ${x:-$(reboot)}", "reboot: "),
    ("echo $((rm -rf /) )", "rm -r: "),
    ("ls > $(reboot)", "reboot: "),
    ("diff <(ls) <(rm -rf /)", "rm -r: "),
    ("X=$(reboot) ls", "reboot: "),
    ("arr=(a $(reboot))", "reboot: "),
    ("(cd / && rm -r x)", "rm -r: "),
    ("{ ls; rm -r x; }", "rm -r: "),
    ("if true; then reboot; fi", "reboot: "),
    ("! reboot", "reboot: "),
    ('for f in *; do rm -rf "$f"; done', "rm -r: "),
    ("while read x; do kill -9 $x; done < pids", "kill -9: "),
    ("f() { rm -rf /; }", "rm -r: "),
    ("ls \\\n && reboot", "reboot: "),
    ("ls\nreboot", "reboot: "),
    ("ls & reboot", "reboot: "),
    ("ls || reboot", "reboot: "),
    ("ls | reboot", "reboot: "),
    ("2>/dev/null rm -r x", "rm -r: "),
    ("/sbin/mkfs.ext4 /dev/sdb1", "mkfs*: /sbin/mkfs.ext4 /dev/sdb1"),
    ("mkfs -t xfs /dev/sdb", "mkfs*: "),
    ("dd if=/dev/zero of=x bs=1M count=1", "dd: "),
    ("shutdown -r now", "shutdown: "),
    ("reboot", "reboot: "),
    ("halt -p", "halt: "),
    ("poweroff", "poweroff: "),
    ("systemctl stop nginx", "systemctl stop: "),
    ("systemctl disable nginx", "systemctl disable: "),
    ("systemctl mask nginx", "systemctl mask: "),
    ("systemctl --now disable x", "systemctl disable: "),
    ("systemctl -H host stop x", "systemctl stop: "),
    ("systemctl reboot", "systemctl reboot: "),
    ("kill -9 1234", "kill -9: kill -9 1234"),
    ("kill -KILL 1", "kill -KILL: "),
    ("kill -kill 1", "kill -KILL: "),
    ("kill -SIGKILL 1", "kill -SIGKILL: "),
    ("kill -s KILL 1", "kill -s=KILL: "),
    ("kill -s 9 1", "kill -s=9: "),
    ("kill -s SIGKILL 1", "kill -s=SIGKILL: "),
    ("kill -skill 1", "kill -s=KILL: "),
    ("kill -n 9 1", "kill -n=9: "),
    ("kill --signal KILL 1", "kill --signal=KILL: "),
    ("kill $PID", "kill -9 (arguments known only at run time): "),
    ("pkill -f worker", "pkill: "),
    ("killall nginx", "killall: "),
    ("iptables -F", "iptables -F: "),
    ("iptables -t nat -F", "iptables -F: "),
    ("iptables --flush INPUT", "iptables --flush: "),
    ("ip6tables -F", "ip6tables -F: "),
    ("userdel -r bob", "userdel: "),
    ("chmod -R 777 /", "chmod -R: "),
    ("chmod --recursive 777 /", "chmod --recursive: "),
    ("chown -R a:b /srv", "chown -R: "),
    ("truncate -s 0 /var/log/syslog", "truncate: "),
    ('psql -c "DROP TABLE users"', "psql -c=<destructive-sql>: "),
    ("psql -c 'delete from t'", "psql -c=<destructive-sql>: "),
    ("psql -c 'drop table t'", "psql -c=<destructive-sql>: "),
    ("psql -c '  TRUNCATE t'", "psql -c=<destructive-sql>: "),
    ("psql -c 'update t set a=1'", "psql -c=<destructive-sql>: "),
    ("psql -c 'select 1; drop table t'", "psql -c=<destructive-sql>: "),
    ("psql -c '-- note\nDROP TABLE t'", "psql -c=<destructive-sql>: "),
    ("psql -Atc 'TRUNCATE t'", "psql -c=<destructive-sql>: "),
    ("psql -c'DROP TABLE t'", "psql -c=<destructive-sql>: "),
    ("psql --command='/* x */ drop table t'", "psql --command=<destructive-sql>: "),
    ("psql --command 'drop table t'", "psql --command=<destructive-sql>: "),
    ("psql -d app -c 'select 1' -c 'drop table t'", "psql -c=<destructive-sql>: "),
    ('psql -c "$SQL"', "psql -c=<destructive-sql> (arguments known only at run time): "),
    ('rm -f "$f"', "rm -r (arguments known only at run time): "),
    ("X=-rf; rm $X /", "rm -r (arguments known only at run time): "),
    ("rm -{r,f} x", "rm -r (arguments known only at run time): "),
]

OPAQUE = [
    "$CMD args",
    '"$CMD" args',
    "`which rm` -rf /",
    "$(which rm) -rf /",
    "{rm,-rf,/}",
    "r? -rf x",
    "/bin/r[m] -rf x",
    "$'rm' -rf x",
    "eval ls",
    'eval "$CMD"',
    "source ./x.sh",
    ". ./x.sh",
    "bash script.sh",
    "echo 'rm -rf /' | bash",
    "bash",
    "sh -s",
    'bash -c "cd $DIR && make"',
    'sh -c "$CMD"',
    "xargs -I{} sh -c '{}'",
    "env -S 'rm -rf /'",
    "sudo -i",
    "sudo -s",
    "doas -s",
    "su - postgres",
    'su -c "$X"',
    'trap "$X" EXIT',
    'alias x="$Y"',
    "sudo $CMD",
    "timeout 5 $CMD",
]

UNPARSEABLE = [
    "echo 'unbalanced",
    'echo "unbalanced',
    "echo `unbalanced",
    "echo $(unterminated",
    "echo ${unterminated",
    "echo $((1 + 2",
    "echo $'unbalanced",
    "echo )",
    "echo (",
    "x=(",
    "ls >",
    "ls > ;",
    "cat <<EOF\nno end",
    "cat <<EOF",
    "cat <<EOF\n$(reboot)\nEOF\n",
    "cat <<EOF\n`reboot`\nEOF\n",
    "case $x in a) ls;; esac",
    "case $x in (a) ls;; esac",
    "echo $((1 + $(reboot)))",
    "$(" * 40 + ")" * 40,
    "(" * 40 + "ls" + ")" * 40,
    "echo " + '"$(' * 40 + ")" * 40,
    "echo " + "${x:-" * 40 + "}" * 40,
    "sudo " * 40 + "ls",
    "ls\0rm -rf /",
    "a" * (MAX_COMMAND_LENGTH + 1),
]


@pytest.mark.parametrize("command", ALLOWED)
def test_allowed(command: str) -> None:
    assert classify_command(command) == Allowed()


@pytest.mark.parametrize(("command", "reason"), NEEDS_APPROVAL)
def test_needs_approval(command: str, reason: str) -> None:
    result = classify_command(command)
    assert isinstance(result, NeedsApproval), command
    assert any(r.startswith(reason) for r in result.reasons), result.reasons


@pytest.mark.parametrize("command", OPAQUE)
def test_commands_we_cannot_see_into_need_approval(command: str) -> None:
    result = classify_command(command)
    assert isinstance(result, NeedsApproval), command
    assert any(r.startswith("opaque: ") for r in result.reasons), result.reasons


@pytest.mark.parametrize("command", UNPARSEABLE)
def test_unparseable_commands_fail_closed(command: str) -> None:
    result = classify_command(command)
    assert isinstance(result, NeedsApproval)
    assert result.reasons[-1].startswith("unparseable: "), result.reasons


def test_reasons_name_the_rule_and_the_command_as_written() -> None:
    assert classify_command("rm -rf /tmp/x") == NeedsApproval(("rm -r: rm -rf /tmp/x",))
    assert classify_command("echo 'x") == NeedsApproval(("unparseable: unbalanced quote",))
    assert classify_command("reboot; reboot; ls") == NeedsApproval(("reboot: reboot",))
    assert classify_command("reboot && rm -r x") == NeedsApproval(
        ("reboot: reboot", "rm -r: rm -r x")
    )


def test_long_commands_are_shortened_in_reasons() -> None:
    result = classify_command("rm -r " + "x" * 1000)
    assert isinstance(result, NeedsApproval)
    assert len(result.reasons[0]) < 250


def test_length_limit() -> None:
    assert classify_command("a" * MAX_COMMAND_LENGTH) == Allowed()
    result = classify_command("a" * (MAX_COMMAND_LENGTH + 1))
    assert isinstance(result, NeedsApproval)
    assert "longer than" in result.reasons[0]


def test_no_rules_still_fails_closed() -> None:
    assert classify_command("rm -rf /", rules=[]) == Allowed()
    assert isinstance(classify_command("eval x", rules=[]), NeedsApproval)
    assert isinstance(classify_command("echo 'x", rules=[]), NeedsApproval)


# --- rules ----------------------------------------------------------------------------------


def test_parse_rule_structure() -> None:
    rule = parse_rule("  systemctl   stop|disable|mask ")
    assert rule == CommandRule(
        "systemctl stop|disable|mask", ("systemctl",), (("stop", "disable", "mask"),)
    )
    assert parse_rule("mkfs*").conditions == ()
    assert parse_rule("kill -s=KILL|-9").conditions == (("-s=KILL", "-9"),)


def test_default_rules_round_trip() -> None:
    assert DEFAULT_RULES
    for rule in DEFAULT_RULES:
        assert parse_rule(rule.text) == rule


CUSTOM = [
    ("git push --force|-f", "git push --force origin main", True),
    ("git push --force|-f", "git -C repo push -f", True),
    ("git push --force|-f", "git push origin main", False),
    ("git push --force|-f", "git log --force", False),
    ("kubectl delete|drain", "kubectl -n prod delete pod x", True),
    ("kubectl delete|drain", "kubectl get pods", False),
    ("ip link del*", "ip -s link delete dev x", True),
    ("ip link del*", "ip link show", False),
    ("ip link del*", "ip addr del 10.0.0.1/24 dev x", False),
    ("tar -x -f", "tar -xf a.tar", True),
    ("tar -x -f", "tar -x a.tar", False),
    ("curl", "sudo curl https://example.com", True),
    ("docker|podman rm|rmi", "podman rmi img", True),
    ("terraform apply|destroy -auto-approve", "terraform apply -auto-approve", True),
    ("terraform apply|destroy -auto-approve", "terraform apply", False),
    ("mysql -e=<destructive-sql>", "mysql -e 'drop database x'", True),
    ("mysql -e=<destructive-sql>", "mysql -e 'select 1'", False),
    ("helm --namespace=kube-*", "helm --namespace kube-system ls", True),
    ("helm --namespace=kube-*", "helm --namespace=default ls", False),
]


@pytest.mark.parametrize(("rule", "command", "needs_approval"), CUSTOM)
def test_custom_rules(rule: str, command: str, needs_approval: bool) -> None:
    result = classify_command(command, [parse_rule(rule)])
    assert isinstance(result, NeedsApproval) is needs_approval, result


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty command rule"),
        ("   ", "empty command rule"),
        ("-r", "must start with a program name"),
        ("-r|rm", "mixes options and words"),
        ("/bin/rm -r", "without a directory"),
        ("rm -r||-R", "empty alternative"),
        ("rm |", "empty alternative"),
        ("rm -r|", "empty alternative"),
        ("rm -", "is not an option"),
        ("rm --", "is not an option"),
        ("rm ---x", "is not an option"),
        ("rm -r|x", "mixes options and words"),
        ("kill -s=", "is not an option"),
        ("kill -=9", "is not an option"),
        ("kill -s*", "is not an option"),
        ("psql -c=<bogus>", "the only value test is <destructive-sql>"),
        ("rm '-r'", "quotes and backslashes"),
        ('rm "x"', "quotes and backslashes"),
        ("rm \\-r", "quotes and backslashes"),
    ],
)
def test_parse_rule_rejects(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("*", r"\*")):
        parse_rule(text)


# --- properties -----------------------------------------------------------------------------

SHELLISH = st.text(alphabet=" \t\n;&|()<>{}[]$`'\"\\#=*?!~-/.,:0123456789abcrmsuxEOF", max_size=200)


@given(st.one_of(st.text(max_size=500), SHELLISH))
def test_never_raises(command: str) -> None:
    result = classify_command(command)
    assert isinstance(result, Allowed | NeedsApproval)
    if isinstance(result, NeedsApproval):
        assert result.reasons
        assert all(isinstance(r, str) and r for r in result.reasons)


@pytest.mark.parametrize(
    "command",
    [
        "(" * MAX_COMMAND_LENGTH,
        "$(" * (MAX_COMMAND_LENGTH // 2),
        '"$(' * (MAX_COMMAND_LENGTH // 3),
        "${" * (MAX_COMMAND_LENGTH // 2),
        "$((" * (MAX_COMMAND_LENGTH // 3),
        "`" * MAX_COMMAND_LENGTH,
        "\\`" * (MAX_COMMAND_LENGTH // 2),
        "'" * MAX_COMMAND_LENGTH,
        '"' * MAX_COMMAND_LENGTH,
        "a " * (MAX_COMMAND_LENGTH // 2),
        "x;" * (MAX_COMMAND_LENGTH // 2),
        "sudo " * (MAX_COMMAND_LENGTH // 5),
        "bash -c " * (MAX_COMMAND_LENGTH // 8),
        "<<A " * (MAX_COMMAND_LENGTH // 4),
        "cat <<A\n" + "x\n" * (MAX_COMMAND_LENGTH // 2 - 8),
        "a=(" * (MAX_COMMAND_LENGTH // 3),
        "rm -r " + "-f " * (MAX_COMMAND_LENGTH // 3 - 3),
        "kill " + "$x " * (MAX_COMMAND_LENGTH // 3 - 3),
        "systemctl " + "--x " * (MAX_COMMAND_LENGTH // 4 - 3),
        "psql -c '" + "select 1;" * (MAX_COMMAND_LENGTH // 9 - 2) + "'",
        "é" * MAX_COMMAND_LENGTH,
    ],
    ids=lambda c: repr(c[:12]),
)
def test_large_inputs_finish_fast(command: str) -> None:
    assert len(command) <= MAX_COMMAND_LENGTH
    started = time.perf_counter()
    classify_command(command)
    assert time.perf_counter() - started < 2.0


SAFE_PROGRAMS = [
    "ls -la",
    "echo",
    "cat",
    "grep -r foo",
    "systemctl status nginx",
    "git log --oneline",
    "rm",
    "kill",
    "psql -c 'select 1'",
    "find . -name x",
    "sudo -u app ls",
]
ARGUMENT = st.text(
    st.characters(exclude_categories=["Cs"], exclude_characters="\0"), max_size=8
).map(shlex.quote)
SIMPLE = st.builds(
    lambda program, args: " ".join([program, *args]),
    st.sampled_from(SAFE_PROGRAMS),
    st.lists(ARGUMENT, max_size=3),
)


def _compound(inner: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    operator = st.sampled_from([" && ", " || ", " | ", "; ", "\n", " & "])
    return st.one_of(
        st.tuples(inner, operator, inner).map("".join),
        inner.map(lambda c: f"echo $({c})"),
        inner.map(lambda c: f'echo "$({c})"'),
        inner.map(lambda c: f"echo `{c}`" if "`" not in c and "\\" not in c else c),
        inner.map(lambda c: f"( {c} )"),
        inner.map(lambda c: f"{{ {c}; }}"),
        inner.map(lambda c: f"if {c}; then {c}; fi"),
        inner.map(lambda c: f"bash -c {shlex.quote(c)}"),
        inner.map(lambda c: f"FOO=1 nice -n 5 timeout 10 {c}"),
    )


COMMANDS = st.recursive(SIMPLE, _compound, max_leaves=6)

DANGEROUS = [
    "rm -rf /tmp/x",
    "rm -r x",
    "rm --recursive x",
    "dd if=/dev/zero of=/dev/sda",
    "mkfs.ext4 /dev/sdb1",
    "shutdown -h now",
    "reboot",
    "systemctl stop nginx",
    "systemctl --now disable x",
    "kill -9 1",
    "kill -s KILL 1",
    "pkill x",
    "killall y",
    "iptables -F",
    "userdel bob",
    "chmod -R 777 /",
    "chown -R a /",
    "truncate -s 0 f",
    "psql -c 'DROP TABLE t'",
    "find / -delete",
    "eval x",
    "$CMD",
    "echo 'unbalanced",
]
DANGEROUS_COMMANDS = st.builds(
    lambda before, prefix, command, after: before + prefix + command + after,
    st.sampled_from(["", "ls && ", "cd /tmp; ", "echo x | "]),
    st.sampled_from(["", "FOO=1 ", "nice -n 5 ", "timeout 5 ", "env A=1 ", "/usr/bin/env "]),
    st.sampled_from(DANGEROUS),
    st.sampled_from(["", " && ls", "; echo done", " | cat", " &"]),
)


@settings(suppress_health_check=[HealthCheck.filter_too_much])
@given(COMMANDS)
def test_appending_a_dangerous_command_needs_approval(command: str) -> None:
    assume(classify_command(command) == Allowed())
    assert isinstance(classify_command(command + "; rm -rf /"), NeedsApproval)
    assert isinstance(classify_command(command + "\nreboot"), NeedsApproval)


@settings(suppress_health_check=[HealthCheck.filter_too_much])
@given(COMMANDS)
def test_bash_c_of_an_allowed_command_is_allowed(command: str) -> None:
    assume(classify_command(command) == Allowed())
    assert classify_command(f"bash -c {shlex.quote(command)}") == Allowed()


@given(DANGEROUS_COMMANDS)
def test_wrapping_keeps_needs_approval(command: str) -> None:
    assert isinstance(classify_command(command), NeedsApproval)
    assert isinstance(classify_command("sudo " + command), NeedsApproval)
    assert isinstance(classify_command(f"bash -c {shlex.quote(command)}"), NeedsApproval)
    assert isinstance(classify_command(f"sh -c {shlex.quote('sudo ' + command)}"), NeedsApproval)


@settings(suppress_health_check=[HealthCheck.filter_too_much])
@given(st.one_of(SHELLISH, st.text(max_size=100)))
def test_bash_c_keeps_needs_approval_for_any_text(command: str) -> None:
    assume(isinstance(classify_command(command), NeedsApproval))
    assert isinstance(classify_command(f"bash -c {shlex.quote(command)}"), NeedsApproval)
