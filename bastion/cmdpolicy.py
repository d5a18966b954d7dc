"""Which `exec` commands need a human's approval before they run.

Responsible for: reading a command line as bash would split it into simple commands (`;`
`&&` `||` `|` `&` newlines, `$(...)`, backquotes, `( )`, `{ }`, `<(...)`, here-documents),
looking through what runs other commands (`sudo`, `doas`, `pkexec`, `env`, `nice`, `nohup`,
`timeout`, `xargs`, `stdbuf`, `ionice`, `time`, `command`, `exec`, `chroot`, `find -exec`,
`bash -c`/`sh -c`/`su -c`, `trap`, `alias`) and matching every command that would run against
`CommandRule`s. The answer is a value, `Allowed()` or `NeedsApproval(reasons)`: this module
decides, the SSH transport enforces. `classify_command` never raises.

Not responsible for: running, rewriting or quoting commands; who approves; whether the grant
permits exec at all. It is a tripwire for well-meaning agents, not a sandbox: programs that
run code of their own (`python -c`, `awk`, `ssh host cmd`, `watch`, `make`, scripts on disk,
`psql -f` or SQL on stdin) and name tricks (`PATH=`, `hash -p`, shadowing functions) are not
followed.

It fails closed. Text it cannot read (unbalanced quotes, an unterminated `$(`, `case`, a
here-document with substitutions, over 64 Ki characters, nesting over 32 deep) and commands
it cannot see into (`eval`, `source`, `.`, a shell without `-c`, `sudo -s` without a command,
`env -S`, `bash -c`/`trap` with a string known only at run time, a program name known only at
run time such as `$CMD`, `` `x` ``, `{rm,-rf}`, `r?`) need approval.

Rule syntax: words separated by spaces; `|` separates alternatives within a word.

    PROGRAM [CONDITION ...]          e.g.  "rm -r|-R|--recursive", "mkfs*", "kill -9|-s=KILL"

PROGRAM is a glob over the program's basename (`/sbin/mkfs.ext4` is `mkfs.ext4`). Every
CONDITION must hold; its alternatives are all options or all words:
  -x            a short-option cluster containing x: `rm -r` matches -r, -fr, -r -f
  --long        that long option or a GNU abbreviation of it: `rm --recursive` matches --rec
  -word, -9     exactly that argument, any case: `find -delete`, `kill -KILL`
  -x=V --long=V that option with a value matching glob V (any case), attached or in the
                next argument: `kill -s=KILL` matches -s KILL, -skill; `--signal=KILL`
  -c=<destructive-sql>   the value holds a DROP, TRUNCATE, or DELETE/UPDATE without WHERE
                statement (split on ';', leading blanks and comments skipped)
  word          globs the positional arguments match in order, from the first non-option
                argument: `systemctl stop|disable|mask`, `ip link del*`
Options count before `--` only. Whether `--now` in `systemctl --now disable x` takes
`disable` as its value is unknown, so a positional match may start at any argument that
follows an option, up to the first one that cannot be an option's value. An argument known
only at run time (`$X`, `"$X"`, `$(...)`, what xargs adds) could be anything, so it satisfies
every condition (options only before `--`): `rm -f "$f"` needs approval, `rm -f -- "$f"`
does not. DEFAULT_RULES spell `kill -9` with its other names (`-KILL`, `-s KILL`, `-n 9`).

Reasons read `<rule as matched>: <command as written>`, `opaque: <why>: <command>` or
`unparseable: <why>`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from fnmatch import fnmatchcase

MAX_COMMAND_LENGTH = 64 * 1024  # characters; longer commands are refused unread
_MAX_DEPTH = 32
_SQL_TEST = "<destructive-sql>"


@dataclass(frozen=True)
class CommandRule:
    """One rule, as `parse_rule` reads it; `text` is the rule as written."""

    text: str
    programs: tuple[str, ...]
    conditions: tuple[tuple[str, ...], ...]


@dataclass(frozen=True)
class Allowed:
    """No rule matched and the whole command was understood."""


@dataclass(frozen=True)
class NeedsApproval:
    reasons: tuple[str, ...]  # "rm -r: rm -rf /tmp/x", "unparseable: unbalanced quote"


_OPTION = re.compile(r"--?[A-Za-z0-9][A-Za-z0-9_.-]*(=.+)?")


def parse_rule(text: str) -> CommandRule:
    """`"systemctl stop|disable|mask"` -> CommandRule; ValueError says what is wrong."""
    words = text.split()
    if not words:
        raise ValueError("empty command rule: write a program, then conditions, like 'rm -r'")
    parsed: list[tuple[str, ...]] = []
    for word in words:
        alts = tuple(word.split("|"))
        where = f"invalid command rule {text!r}: {word!r}"
        if "" in alts:
            raise ValueError(f"{where} has an empty alternative")
        if any(c in word for c in "'\"\\"):
            raise ValueError(f"{where}: quotes and backslashes are not supported")
        options = {alt.startswith("-") for alt in alts}
        if len(options) > 1:
            raise ValueError(f"{where} mixes options and words")
        for alt in alts if options == {True} else ():
            if not (match := _OPTION.fullmatch(alt)):
                raise ValueError(f"{where}: {alt!r} is not an option like -r, --force or -s=KILL")
            value = (match.group(1) or "=")[1:]
            if value.startswith("<") and value != _SQL_TEST:
                raise ValueError(f"{where}: the only value test is {_SQL_TEST}")
        parsed.append(alts)
    programs, *conditions = parsed
    if any(p.startswith("-") for p in programs):
        raise ValueError(f"invalid command rule {text!r}: it must start with a program name")
    if any("/" in p for p in programs):
        raise ValueError(f"invalid command rule {text!r}: name the program without a directory")
    return CommandRule(" ".join(words), programs, tuple(conditions))


DEFAULT_RULES: tuple[CommandRule, ...] = tuple(
    parse_rule(rule)
    for rule in (
        "rm -r|-R|--recursive",
        "dd",
        "mkfs*",
        "shutdown|reboot|halt|poweroff",
        "systemctl stop|disable|mask",
        "systemctl kill|reboot|poweroff|halt|kexec",
        "kill -9|-KILL|-SIGKILL|-s=9|-s=KILL|-s=SIGKILL|-n=9|--signal=9|--signal=KILL"
        "|--signal=SIGKILL",
        "pkill|killall",
        "iptables|ip6tables -F|--flush",
        "userdel",
        "chmod -R|--recursive",
        "chown -R|--recursive",
        "truncate",
        "psql -c=<destructive-sql>|--command=<destructive-sql>",
        "find -delete",
    )
)


def classify_command(
    command: str, rules: Sequence[CommandRule] = DEFAULT_RULES
) -> Allowed | NeedsApproval:
    """Does running `command` (an SSH exec request, read by bash) need approval?"""
    if len(command) > MAX_COMMAND_LENGTH:
        return NeedsApproval((f"unparseable: longer than {MAX_COMMAND_LENGTH} characters",))
    if "\0" in command:
        return NeedsApproval(("unparseable: contains a NUL character",))
    classifier = _Classifier(rules)
    try:
        classifier.text(command, 0)
    except _Unparseable as exc:
        classifier.reasons.append(f"unparseable: {exc}")
    reasons = tuple(dict.fromkeys(classifier.reasons))
    return NeedsApproval(reasons) if reasons else Allowed()


# --- reading shell text -------------------------------------------------------------------


class _Unparseable(Exception):
    """Internal: the text cannot be read; `classify_command` turns it into a reason."""


@dataclass(frozen=True)
class _Word:
    text: str  # after quote removal; expansions stay as written
    raw: str  # as written, for reasons
    dynamic: bool = False  # holds an expansion: the value is known only at run time
    glob: bool = False  # holds an unquoted * ? or [...] the shell may expand


_BLANKS = frozenset(" \t")
_META = frozenset(" \t\n;&|()<>")
_REDIRECT = re.compile(r"&>>?|<<<|<<-?|<>|[<>]&|>>|>\||[<>]")
_PARAM = re.compile(r"[A-Za-z_][A-Za-z0-9_]*|[0-9@*#?$!-]")
_BRACE_EXPANSION = re.compile(r"\{[^{}]*(,|\.\.)[^{}]*\}")
_PLAIN = re.compile(r"[^ \t\n;&|()<>\\'\"$`]+")
_FD = re.compile(r"[0-9]+|\{[A-Za-z_][A-Za-z0-9_]*\}")


class _Lexer:
    """Splits shell text into simple commands, collecting the ones nested in words too."""

    def __init__(self, src: str, depth: int) -> None:
        self.src, self.pos, self.depth = src, 0, depth
        self.commands: list[tuple[_Word, ...]] = []
        self.heredocs: list[tuple[str, bool, bool]] = []  # delimiter, strip tabs, quoted
        self._nest(0)

    def _nest(self, step: int) -> None:
        self.depth += step
        if self.depth > _MAX_DEPTH:
            raise _Unparseable(f"nested more than {_MAX_DEPTH} deep")

    def parse(self) -> list[tuple[_Word, ...]]:
        self._list(None)
        if self.heredocs:
            raise _Unparseable("unterminated here-document")
        return self.commands

    def _peek(self, size: int = 1) -> str:
        return self.src[self.pos : self.pos + size]

    def _end(self, words: list[_Word]) -> None:
        if words:
            self.commands.append(tuple(words))
            words.clear()

    def _list(self, closer: str | None) -> None:
        """Commands up to `closer` (consumed) or the end of the text."""
        self._nest(closer is not None)
        words: list[_Word] = []
        while (c := self._peek()) != ")":
            if not c:
                if closer:
                    raise _Unparseable(f"missing {closer!r}")
                break
            if c in _BLANKS or self._peek(2) == "\\\n":
                self.pos += 1 if c in _BLANKS else 2
            elif c == "#":  # only reached at the start of a word
                end = self.src.find("\n", self.pos)
                self.pos = len(self.src) if end < 0 else end
            elif c == "\n":
                self._end(words)
                self.pos += 1
                self._heredoc_bodies()
            elif c == "(":
                self.pos += 1
                if not words:
                    self._list(")")
                elif self.src[self.pos - 2] == "=":
                    self._array()
                else:  # `name()` starts a function definition; its body is a group
                    self._skip_blanks()
                    if self._peek() != ")":
                        raise _Unparseable("unexpected '('")
                    self.pos += 1
                    words.clear()
            elif c in "<>&" and (m := _REDIRECT.match(self.src, self.pos)):
                self.pos = m.end()
                self._redirect(m.group(), words)
            elif c in ";&|":
                self._end(words)
                self.pos += 1
            else:
                word = self._word()
                if word.raw in ("{", "}"):
                    self._end(words)
                elif not (self._peek() in ("<", ">") and _FD.fullmatch(word.raw)):
                    words.append(word)
        if c == ")" and closer != ")":
            raise _Unparseable("unbalanced ')'")
        self.pos += c == ")"
        self._end(words)
        self._nest(-(closer is not None))

    def _skip_blanks(self) -> None:
        while self.pos < len(self.src) and self.src[self.pos] in _BLANKS:
            self.pos += 1

    def _array(self) -> None:
        while (c := self._peek()) != ")":
            if not c or (c in _META and c not in " \t\n"):
                raise _Unparseable("unterminated array")
            if c in " \t\n":
                self.pos += 1
            else:
                self._word()
        self.pos += 1

    def _redirect(self, op: str, words: list[_Word]) -> None:
        if op in ("<", ">") and self._peek() == "(":  # process substitution: an argument
            self.pos += 1
            self._list(")")
            words.append(_Word("", f"{op}(...)", dynamic=True))
            return
        self._skip_blanks()
        if not self._peek() or self._peek() in _META:
            raise _Unparseable(f"{op} without a target")
        target = self._word()
        if op in ("<<", "<<-"):
            quoted = any(q in target.raw for q in "'\"\\")
            self.heredocs.append((target.text, op == "<<-", quoted))

    def _heredoc_bodies(self) -> None:
        pending, self.heredocs = self.heredocs, []
        for delimiter, strip_tabs, quoted in pending:
            while True:
                if self.pos >= len(self.src):
                    raise _Unparseable("unterminated here-document")
                end = self.src.find("\n", self.pos)
                end = len(self.src) if end < 0 else end
                line, self.pos = self.src[self.pos : end], end + 1
                if (line.lstrip("\t") if strip_tabs else line) == delimiter:
                    break
                if not quoted and ("$(" in line or "`" in line):
                    raise _Unparseable("here-document with command substitution")

    def _word(self) -> _Word:
        src, start = self.src, self.pos
        text: list[str] = []
        bare: list[str] = []  # unquoted characters, for globs and brace expansion
        dynamic = False
        while self.pos < len(src) and (c := src[self.pos]) not in _META:
            if c == "\\":
                after = src[self.pos + 1 : self.pos + 2]
                text.append("" if after == "\n" else after or "\\")
                self.pos += 2
            elif c == "'":
                text.append(self._single_quoted())
            elif c == '"':
                self.pos += 1
                dynamic |= self._double_quoted(text)
            elif c == "$":
                dynamic |= self._dollar(text, quoted=False)
            elif c == "`":
                self._backquoted(text)
                dynamic = True
            else:
                run = _PLAIN.match(src, self.pos)
                chars = run.group() if run else c
                text.append(chars)
                bare.append(chars)
                self.pos += len(chars)
        unquoted = "".join(bare)
        bracket = unquoted.find("[")
        glob = "*" in unquoted or "?" in unquoted or (bracket >= 0 and "]" in unquoted[bracket:])
        dynamic |= bool(_BRACE_EXPANSION.search(unquoted))
        return _Word("".join(text), src[start : self.pos], dynamic, glob)

    def _single_quoted(self) -> str:
        end = self.src.find("'", self.pos + 1)
        if end < 0:
            raise _Unparseable("unbalanced quote")
        quoted, self.pos = self.src[self.pos + 1 : end], end + 1
        return quoted

    def _double_quoted(self, text: list[str]) -> bool:
        dynamic = False
        while True:
            if self.pos >= len(self.src):
                raise _Unparseable("unbalanced quote")
            c = self.src[self.pos]
            if c == '"':
                self.pos += 1
                return dynamic
            if c == "\\":
                after = self.src[self.pos + 1 : self.pos + 2]
                text.append("" if after == "\n" else after if after in '$`"\\' else "\\" + after)
                self.pos += 2
            elif c == "$":
                dynamic |= self._dollar(text, quoted=True)
            elif c == "`":
                self._backquoted(text)
                dynamic = True
            else:
                text.append(c)
                self.pos += 1

    def _dollar(self, text: list[str], quoted: bool) -> bool:
        """An expansion at `$`: True, its source appended to `text`; a lone `$`: False."""
        src, start = self.src, self.pos
        after = src[start + 1 : start + 2]
        self._nest(1)
        if src.startswith("$((", start) and (end := self._arithmetic_end(start)) > 0:
            if "$(" in src[start + 1 : end] or "`" in src[start:end]:
                raise _Unparseable("command substitution inside $((...))")
            self.pos = end
        elif after == "(":
            self.pos += 2
            self._list(")")
        elif after == "{":
            self.pos += 2
            self._braced()
        elif after == "'" and not quoted:  # $'...': decoding it is not worth the risk
            end = start + 2
            while end < len(src) and src[end] != "'":
                end += 2 if src[end] == "\\" else 1
            if end >= len(src):
                raise _Unparseable("unbalanced quote")
            self.pos = end + 1
        elif after == '"' and not quoted:
            self.pos += 2
            self._double_quoted([])
        elif m := _PARAM.match(src, start + 1):
            self.pos = m.end()
        else:
            text.append("$")
            self.pos += 1
            self._nest(-1)
            return False
        text.append(src[start : self.pos])
        self._nest(-1)
        return True

    def _arithmetic_end(self, start: int) -> int:
        """End of `$((...))`, or 0 when the parentheses close as `$( (...) )` instead."""
        depth = 0
        for i in range(start + 1, len(self.src)):
            depth += (self.src[i] == "(") - (self.src[i] == ")")
            if depth == 0:
                return i + 1 if self.src[i - 1] == ")" else 0
        raise _Unparseable("unterminated $((")

    def _braced(self) -> None:
        depth = 1
        while depth:
            if self.pos >= len(self.src):
                raise _Unparseable("unterminated ${")
            c = self.src[self.pos]
            if c == "'":
                self._single_quoted()
            elif c == '"':
                self.pos += 1
                self._double_quoted([])
            elif c == "$":
                self._dollar([], quoted=True)
            elif c == "`":
                self._backquoted([])
            else:
                depth += (c == "{") - (c == "}")
                self.pos += 2 if c == "\\" else 1

    def _backquoted(self, text: list[str]) -> None:
        src, end = self.src, self.pos + 1
        body: list[str] = []
        while end < len(src) and src[end] != "`":
            escaped = src[end] == "\\" and src[end + 1 : end + 2] in ("`", "\\", "$")
            body.append(src[end + escaped])
            end += 1 + escaped
        if end >= len(src):
            raise _Unparseable("unbalanced backquote")
        text.append(src[self.pos : end + 1])
        self.pos = end + 1
        self.commands.extend(_Lexer("".join(body), self.depth + 1).parse())


# --- deciding ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Wrapper:
    """How a program that runs another program takes its own options."""

    values: str = ""  # short options taking a value, attached or as the next word
    attached: str = ""  # short options whose value can only be attached (xargs -i)
    long_values: tuple[str, ...] = ()  # long options taking the next word unless given `=`
    long_flags: tuple[str, ...] = ()  # long options we must recognise when abbreviated
    assignments: bool = False  # NAME=value words may follow the options (env, sudo)
    operands: int = 0  # words between the options and the command (timeout's duration)


_WRAPPERS = {
    "sudo": _Wrapper(
        "ughpCDrRtTU",
        long_values=(
            *("user", "group", "host", "prompt", "close-from", "chdir", "role", "type"),
            *("command-timeout", "other-user", "chroot"),
        ),
        long_flags=("shell", "login"),
        assignments=True,
    ),
    "doas": _Wrapper("uC"),
    "env": _Wrapper("uCSP", long_values=("unset", "chdir", "split-string"), assignments=True),
    "nice": _Wrapper("n", long_values=("adjustment",)),
    "timeout": _Wrapper("sk", long_values=("signal", "kill-after"), operands=1),
    "xargs": _Wrapper(
        "aEIdLnPs",
        "eil",
        ("arg-file", "delimiter", "max-args", "max-procs", "max-chars", "process-slot-var"),
        ("replace", "eof", "max-lines"),
    ),
    "stdbuf": _Wrapper("ioe", long_values=("input", "output", "error")),
    "ionice": _Wrapper("cn", long_values=("class", "classdata")),
    "time": _Wrapper("fo", long_values=("format", "output")),
    "exec": _Wrapper("a"),
    "pkexec": _Wrapper(long_values=("user",)),
    "chroot": _Wrapper(long_values=("userspec", "groups"), operands=1),
    **dict.fromkeys(("command", "builtin", "nohup", "setsid", "busybox"), _Wrapper()),
}
_SHELLS = frozenset({"sh", "bash", "dash", "zsh", "ksh", "mksh", "ash"})
_EVALUATORS = frozenset({"eval", "source", "."})
_RESERVED = frozenset(
    {"!", "if", "then", "elif", "else", "fi", "do", "done", "while", "until", "coproc"}
)
_ASSIGNMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\[[^]]*\])?\+?=")
_DYNAMIC_INPUT = _Word("", "", dynamic=True)  # the arguments xargs appends
_SHELL_OPTIONS = frozenset({"s", "i", "shell", "login"})
_SQL_LEAD = re.compile(r"(?:\s|--[^\n]*|/\*.*?\*/)*([A-Za-z]*)", re.DOTALL)
_WHERE = re.compile(r"\bWHERE\b", re.IGNORECASE)


class _Classifier:
    """Walks the commands in some shell text, collecting why they need approval."""

    def __init__(self, rules: Sequence[CommandRule]) -> None:
        self.rules = rules
        self.reasons: list[str] = []
        self._by_program: dict[str, list[tuple[CommandRule, str]]] = {}

    def text(self, src: str, depth: int) -> None:
        for words in _Lexer(src, depth).parse():
            i = 0
            while i < len(words) and (words[i].raw in _RESERVED or _ASSIGNMENT.match(words[i].raw)):
                i += 1
            if i == len(words) or words[i].raw in ("for", "select", "function"):
                continue  # names and word lists; substitutions in them were collected
            if words[i].raw == "case":
                raise _Unparseable("case statements are not supported")
            self.argv(words[i:], depth)

    def argv(self, argv: Sequence[_Word], depth: int) -> None:
        if depth > _MAX_DEPTH:
            raise _Unparseable(f"nested more than {_MAX_DEPTH} deep")
        head, args = argv[0], argv[1:]
        shown = " ".join(w.raw for w in argv if w.raw)
        shown = shown if len(shown) <= 200 else shown[:199] + "…"
        if head.dynamic or head.glob:
            self.reasons.append(f"opaque: the program is known only at run time: {shown}")
            return
        name = head.text.rsplit("/", 1)[-1]
        if name not in self._by_program:
            hits = (
                (rule, [p for p in rule.programs if fnmatchcase(name, p)]) for rule in self.rules
            )
            self._by_program[name] = [(rule, patterns[0]) for rule, patterns in hits if patterns]
        for rule, pattern in self._by_program[name]:
            if label := _match(rule, pattern, args):
                self.reasons.append(f"{label}: {shown}")

        def opaque(why: str) -> None:
            self.reasons.append(f"opaque: {name} {why}: {shown}")

        if name in _EVALUATORS:
            opaque("runs code that cannot be inspected")
        elif name in _SHELLS or name in ("su", "runuser", "trap", "alias"):
            scripts: list[_Word | None]
            if name == "trap":
                rest = args[1:] if args[:1] and args[0].text == "--" else args
                scripts = [rest[0]] if rest and not rest[0].text.startswith("-") else []
            elif name == "alias":  # bodies run wherever `shopt -s expand_aliases` is set
                scripts = [replace(a, text=a.text.partition("=")[2]) for a in args if "=" in a.text]
            else:
                scripts = [_shell_script(args) if name in _SHELLS else _su_script(args)]
            for script in scripts:
                if script is None or script.dynamic:
                    opaque("runs a script that cannot be inspected")
                else:
                    self.text(script.text, depth + 1)
        elif name == "find":
            start = None
            for i, arg in enumerate(args):
                if start is None and arg.text in ("-exec", "-execdir", "-ok", "-okdir"):
                    start = i + 1
                elif start is not None and arg.text in (";", "+"):
                    if i > start:
                        self.argv(args[start:i], depth + 1)
                    start = None
        elif (wrapper := _WRAPPERS.get(name)) is not None:
            seen, i = _parse_options(wrapper, args)
            inner = list(args[i:])
            if name == "env" and seen.keys() & {"S", "split-string"}:
                opaque("-S splits a string into a command")
            elif name == "command" and seen.keys() & {"v", "V"}:
                pass  # only says what the name would run
            elif not inner and name in ("sudo", "doas") and seen.keys() & _SHELL_OPTIONS:
                opaque("starts a shell that reads stdin")
            elif inner:
                self.argv(_xargs_command(seen, inner) if name == "xargs" else inner, depth + 1)


def _parse_options(wrapper: _Wrapper, args: Sequence[_Word]) -> tuple[dict[str, str], int]:
    """The wrapper's options (name -> value) and where the wrapped command starts."""
    seen: dict[str, str] = {}
    i = 0
    while i < len(args) and not args[i].dynamic and args[i].text.startswith("-"):
        text = args[i].text
        i += 1
        if text in ("-", "--"):
            i -= text == "-"
            break
        if text.startswith("--"):
            name, eq, value = text[2:].partition("=")
            known = [n for n in (*wrapper.long_values, *wrapper.long_flags) if n.startswith(name)]
            name = known[0] if len(known) == 1 else name
            if name in wrapper.long_values and not eq and i < len(args):
                value, i = args[i].text, i + 1
            seen[name] = value
            continue
        for k, letter in enumerate(text[1:], 2):
            seen[letter] = text[k:] if letter in wrapper.values + wrapper.attached else ""
            if letter in wrapper.values + wrapper.attached:
                if not seen[letter] and letter in wrapper.values and i < len(args):
                    seen[letter], i = args[i].text, i + 1
                break
    while wrapper.assignments and i < len(args) and "=" in args[i].text:
        i += 1
    return seen, i + wrapper.operands


def _xargs_command(seen: dict[str, str], inner: list[_Word]) -> list[_Word]:
    """xargs appends its input to the command, or puts it where -I's marker is."""
    modes = [key for key in ("I", "i", "replace") if key in seen]
    if not modes:
        return [*inner, _DYNAMIC_INPUT]
    marker = seen[modes[0]] or "{}"
    return [replace(w, dynamic=True) if marker in w.text else w for w in inner]


def _shell_script(args: Sequence[_Word]) -> _Word | None:
    """The script of `bash [options] -c SCRIPT [args]`; None without -c."""
    i, has_c = 0, False
    while i < len(args) and not args[i].dynamic:
        text = args[i].text
        if text in ("-", "--"):
            i += 1
            break
        if text in ("--rcfile", "--init-file"):
            i += 2
        elif text.startswith("--"):
            i += 1
        elif len(text) > 1 and text[0] in "-+":
            has_c |= text[0] == "-" and "c" in text
            i += 1 + ("o" in text[1:]) + ("O" in text[1:])  # -o/-O take a name
        else:
            break
    return args[i] if has_c and i < len(args) else None


def _su_script(args: Sequence[_Word]) -> _Word | None:
    """The command of `su [options] -c COMMAND [user]`; None without -c."""
    for i, arg in enumerate(args):
        text, following = arg.text, (args[i + 1] if i + 1 < len(args) else None)
        if text.startswith("--c") and "--command".startswith(text.partition("=")[0]):
            return replace(arg, text=text.partition("=")[2]) if "=" in text else following
        if text[:1] == "-" and text[1:2] != "-" and "c" in text:
            rest = text[text.index("c") + 1 :]
            return replace(arg, text=rest) if rest else following
    return None


def _match(rule: CommandRule, program: str, args: Sequence[_Word]) -> str | None:
    """'rm -r' (the alternatives that matched) if `rule` covers these arguments, else None."""
    options = [alts for alts in rule.conditions if alts[0].startswith("-")]
    words = [alts for alts in rule.conditions if not alts[0].startswith("-")]
    for lenient in (False, True):  # lenient: run-time values may be anything
        hits = [next((a for a in alts if _has_option(a, args, lenient)), "") for alts in options]
        found = _find_words(words, args, lenient)
        if all(hits) and found is not None:
            label = " ".join([program, *hits, *found])
            return f"{label} (arguments known only at run time)" if lenient else label
    return None


def _has_option(alt: str, args: Sequence[_Word], lenient: bool) -> bool:
    name, _, want = alt.partition("=")
    short = len(name) == 2 and name[1].isalpha()
    for i, arg in enumerate(args):
        text, value = arg.text, None
        following = args[i + 1] if i + 1 < len(args) else None
        if arg.dynamic:
            if lenient:
                return True
            continue
        if text == "--":
            return False
        head, eq, tail = text.partition("=")
        if short and text[:1] == "-" and text[1:2] != "-" and name[1] in text[1:]:
            rest = text[text.index(name[1], 1) + 1 :]
            value = _Word(rest, rest) if rest else following
        elif (len(head) > 2 and head.startswith("--") and name.startswith(head)) or (
            not short and not name.startswith("--") and head.lower() == name.lower()
        ):
            value = _Word(tail, tail) if eq else following
        else:
            continue
        if not want:
            return True
        if value is not None and value.dynamic and lenient:
            return True
        if value is not None and not value.dynamic:
            if want == _SQL_TEST and _destructive_sql(value.text):
                return True
            if want != _SQL_TEST and fnmatchcase(value.text.upper(), want.upper()):
                return True
    return False


def _find_words(
    words: Sequence[tuple[str, ...]], args: Sequence[_Word], lenient: bool
) -> list[str] | None:
    """The positional arguments matching `words` in order, or None."""
    positional: list[tuple[_Word, bool]] = []  # (word, might be the value of an option)
    options = True
    for i, arg in enumerate(args):
        if options and not arg.dynamic and arg.text == "--":
            options = False
        elif arg.dynamic or not options or not arg.text.startswith("-") or arg.text == "-":
            before = args[i - 1].text if i and options else ""
            might_be_value = before.startswith("-") and before != "-" and "=" not in before
            positional.append((arg, arg.dynamic or might_be_value))
    if not words:
        return []
    for start, (_, might_be_value) in enumerate(positional):
        found: list[str] = []
        for alts, (arg, _) in zip(words, positional[start:], strict=False):
            if arg.dynamic and lenient:
                return found + [alts[0] for alts in words[len(found) :]]
            if arg.dynamic or not any(fnmatchcase(arg.text, alt) for alt in alts):
                break
            found.append(arg.text)
        if len(found) == len(words):
            return found
        if not might_be_value:
            break
    return None


def _destructive_sql(sql: str) -> bool:
    for statement in sql.split(";"):
        verb = m.group(1).upper() if (m := _SQL_LEAD.match(statement)) else ""
        if verb in ("DROP", "TRUNCATE"):
            return True
        if verb in ("DELETE", "UPDATE") and not _WHERE.search(statement):
            return True
    return False
