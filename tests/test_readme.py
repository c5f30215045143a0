"""README's commands parse: every `python train.py ...`, `python finetune.py ...`, `python -m vit.<tool> ...`
and `torchrun ... train.py ...` in README.md (its shell code blocks and its inline code) is parsed by that
entry point's own `build_parser()`, so README cannot drift from the command line. Nothing runs: argparse
only checks the flags (names, types, choices, required options), as `-h` would see them."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
SCRIPTS = {"train.py": "vit.train", "finetune.py": "vit.finetune"}  # the repository-root commands -> their module
TOOLS = ("predict", "visualize", "sweep", "bench", "transfer")  # python -m vit.<tool>
SHELL_SEPARATORS = {"&&", "||", ";", "|"}
NOT_SHELL = {"python", "py", "json", "text", "csv", "diff", "output"}  # fence info strings that are not commands
FENCE = re.compile(r"^\s*(`{3,}|~{3,})\s*([\w+-]*)")
INLINE = re.compile(r"(?<!`)`([^`\n]+)`(?!`)")
ENV_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
MENTIONS_COMMAND = re.compile(r"\b(python3?|torchrun)\b")


def _logical_lines(text: str) -> tuple[list[str], list[str]]:
    """(shell lines of the fenced code blocks, with `\\` continuations joined; inline code spans outside them,
    a span wrapped over lines of a paragraph joined by a space)."""
    shell, inline, prose = [], [], []
    fence, info, pending = None, "", ""
    for line in text.splitlines():
        m = FENCE.match(line)
        if fence is None and m:
            fence, info, pending = m.group(1), m.group(2).lower(), ""
            continue
        if fence is not None and line.strip().startswith(fence):  # the closing fence
            if pending:
                shell.append(pending)
            fence = None
            continue
        if fence is None:
            prose.append(line)
        elif info not in NOT_SHELL:
            if line.rstrip().endswith("\\"):
                pending += line.rstrip()[:-1] + " "
            else:
                shell.append(pending + line)
                pending = ""
    for paragraph in "\n".join(prose).split("\n\n"):  # an inline span may wrap onto the next line
        inline += INLINE.findall(paragraph.replace("\n", " "))
    return shell, inline


def _segments(tokens: list[str]) -> list[list[str]]:
    """A tokenised shell line split into its simple commands at &&, ||, ; and |."""
    out, current = [], []
    for token in tokens:
        if token in SHELL_SEPARATORS:
            out.append(current)
            current = []
        else:
            current.append(token)
    return [*out, current]


def _entry_point(tokens: list[str]) -> tuple[str, list[str]] | None:
    """(entry point, argv) of one simple command, or None when it is not one of ours (pip, pytest, venv...)."""
    while tokens and ENV_ASSIGNMENT.match(tokens[0]):  # OMP_NUM_THREADS=1 python ...
        tokens = tokens[1:]
    if len(tokens) >= 2 and tokens[0] in ("python", "python3"):
        if tokens[1] in SCRIPTS:
            return SCRIPTS[tokens[1]], tokens[2:]
        if tokens[1] == "-m" and len(tokens) >= 3 and tokens[2].split(".")[0] == "vit":
            if "<" in tokens[2]:  # `python -m vit.<tool>`: prose naming the tools, not a command
                return None
            return tokens[2], tokens[3:]  # "vit.sweep"; an unknown vit.<name> fails in the test
        return None
    if tokens and tokens[0] == "torchrun":
        for i, token in enumerate(tokens[1:], 1):
            if token.endswith(".py"):
                return SCRIPTS.get(token, token), tokens[i + 1:]
        return "torchrun without a script", []
    return None


def readme_commands(text: str) -> list[tuple[str, str, tuple[str, ...]]]:
    """Every (command as written, entry point, argv) that README shows, each once, in README's order."""
    shell, inline = _logical_lines(text)
    found = []
    for line in shell + inline:
        line = re.sub(r"^\s*\$\s+", "", line)  # a shell prompt in an example of output
        if not MENTIONS_COMMAND.search(line):
            continue
        try:
            tokens = shlex.split(line, comments=True)
        except ValueError as e:  # an unbalanced quote: README shows a command no shell would accept
            found.append((line.strip(), f"unparsable shell line ({e})", []))
            continue
        for segment in _segments(tokens):
            entry = _entry_point(segment)
            if entry is not None:
                found.append((shlex.join(segment), *entry))
    return list(dict.fromkeys((c, e, tuple(a)) for c, e, a in found).keys())


COMMANDS = readme_commands(README.read_text(encoding="utf-8"))


def build_parser(entry: str) -> argparse.ArgumentParser:
    """The entry point's own parser: `build_parser()` of train.py, finetune.py or vit.<tool>."""
    if entry in SCRIPTS.values() or entry.startswith("vit.") and entry[4:] in TOOLS:
        module = importlib.import_module(entry)
    else:
        pytest.fail(f"README runs {entry!r}, which is not an entry point of this project "
                    f"(train.py, finetune.py, python -m vit.{{{','.join(TOOLS)}}})")
    if not callable(getattr(module, "build_parser", None)):
        pytest.fail(f"{entry} has no build_parser() returning its argparse.ArgumentParser")
    return module.build_parser()


def check_parses(parser: argparse.ArgumentParser, argv: list[str], command: str, known: bool = False) -> argparse.Namespace:
    """parser.parse_args(argv) (or parse_known_args, which must leave nothing over), failing the test with
    the command and argparse's own message instead of exiting."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            if not known:
                return parser.parse_args(argv)
            args, unknown = parser.parse_known_args(argv)
    except SystemExit as e:
        if e.code == 0 and ("-h" in argv or "--help" in argv):
            return argparse.Namespace()  # README shows the help: argparse printed it and exited 0
        pytest.fail(f"README command does not parse:\n  {command}\n{err.getvalue().strip()}")
    if unknown:
        pytest.fail(f"README command does not parse:\n  {command}\nunrecognized arguments: {' '.join(unknown)}")
    return args


def check_sweep(argv: list[str], command: str) -> None:
    """vit.sweep: its own flags before `--` (parsed with parse_known_args, refusing leftovers, as the sweep
    does), the --script's flags (train.py's by default) after it, and every grid value as that script's
    flags of one run."""
    own, extra = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    args = check_parses(build_parser("vit.sweep"), own, command, known=True)
    script = getattr(args, "script", None) or "train"
    train = build_parser(f"vit.{script}")
    fixed = ((["--data", args.data] if getattr(args, "data", None) else [])
             + (["--epochs", str(args.epochs)] if getattr(args, "epochs", None) else []) + extra)
    check_parses(train, fixed, command)
    # the script's long options by name without dashes, '-' as '_' (how the sweep names its grid axes)
    options = {a.option_strings[0].lstrip("-").replace("-", "_"): a for a in train._actions
               if a.option_strings and a.option_strings[0].startswith("--")}
    for token in getattr(args, "grid", None) or []:
        name, sep, values = token.partition("=")
        action = options.get(name.replace("-", "_"))
        if not sep or action is None:
            pytest.fail(f"README command does not parse:\n  {command}\ngrid axis {token!r} is not NAME=V1,V2 "
                        f"with NAME a {script}.py flag")
        if action.nargs == 0:  # an on/off switch: the sweep maps true/false itself
            continue
        for value in values.split(","):
            check_parses(train, [*fixed, action.option_strings[0], value], command)


def test_readme_shows_commands():
    # so that a README without a single command (or a broken extraction) cannot pass by checking nothing
    assert COMMANDS, f"no python train.py / finetune.py / -m vit.<tool> / torchrun command found in {README}"


@pytest.mark.parametrize("command, entry, argv", COMMANDS,
                         ids=[c[0] if len(c[0]) <= 90 else c[0][:87] + "..." for c in COMMANDS])
def test_readme_command_flags_parse(command, entry, argv):
    argv = list(argv)
    if entry == "vit.sweep":
        check_sweep(argv, command)
    else:
        check_parses(build_parser(entry), argv, command)
