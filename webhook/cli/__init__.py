"""Command-line entry point: `pod-identity-webhook [COMMAND] [FLAGS]`.

`serve` is the default command so that the binary accepts upstream's flags unchanged.
Every command lives in its own module under `webhook.cli` exposing:

    HELP: str                                   one-line summary
    add_arguments(parser: argparse.ArgumentParser) -> None
    run(args: argparse.Namespace) -> int        exit code

Modules are imported only when their command runs, so `serve` starts without loading the
toolkit's dependencies.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import os
import re
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import NoReturn

from webhook import __version__

PROG = "pod-identity-webhook"
# command name -> module under webhook.cli
COMMANDS: dict[str, str] = {
    "serve": "serve",
    "replay": "replay",
    "certs": "certs",
    "oidc": "oidc",
    "token": "token",
    "trust-policy": "trust_policy",
    "audit": "audit",
    "version": "version",
    "completion": "completion",
}
# Exit status of a process killed by SIGPIPE, what `cmd | head` leaves for C and Go programs.
_BROKEN_PIPE_EXIT = 128 + 13


class UsageError(Exception):
    """Bad input from the user: printed as one clear line, exit code 2, never a traceback."""


def load(command: str) -> ModuleType:
    return importlib.import_module(f"webhook.cli.{COMMANDS[command]}")


_UNRECOGNIZED = "unrecognized arguments: "
_OPTION = re.compile(r"(?<![\w-])--?[A-Za-z][\w-]*")


class CommandParser(argparse.ArgumentParser):
    """argparse, answering a bad flag as kubectl does: one line, a did-you-mean for a mistyped
    flag, and where to read the usage; not the 35-45 lines of usage first."""

    def error(self, message: str) -> NoReturn:
        line = f"{self.prog}: error: {message}"
        if message.startswith(_UNRECOGNIZED):
            words = message[len(_UNRECOGNIZED) :].split()
            flag = next((w.split("=", 1)[0] for w in words if w.startswith("-")), "")
            known = sorted(set(_OPTION.findall(self.format_help())))
            close = difflib.get_close_matches(flag, known, n=1, cutoff=0.6) if flag else []
            if close:
                line += f'; did you mean "{close[0]}"?'
        self.exit(2, f"{line}\nSee '{self.prog} --help'.\n")


def build_parser(command: str, module: ModuleType) -> argparse.ArgumentParser:
    parser = CommandParser(prog=f"{PROG} {command}", description=getattr(module, "HELP", None))
    module.add_arguments(parser)
    return parser


def _top_level_help() -> str:
    lines = [
        f"{PROG} {__version__}",
        "",
        f"usage: {PROG} [COMMAND] [FLAGS]   (COMMAND defaults to serve)",
        "",
        "commands:",
    ]
    for name in COMMANDS:
        try:
            summary = getattr(load(name), "HELP", "")
        except ImportError:  # a command whose optional module is not installed
            continue
        lines.append(f"  {name:<14}{summary}")
    lines.append("")
    lines.append(f"Run `{PROG} COMMAND --help` for a command's flags.")
    return "\n".join(lines)


def unknown_command_message(word: str) -> str:
    """kubectl's answer to a mistyped command: name it and suggest the closest one."""
    message = f'unknown command "{word}"'
    close = difflib.get_close_matches(word, [*COMMANDS, "help"], n=1, cutoff=0.5)
    if close:
        message += f'; did you mean "{close[0]}"?'
    return f"{message}\nRun `{PROG} --help` for the list of commands."


def _dispatch(args: list[str]) -> int:
    if args and args[0] in ("help", "-h", "--help"):
        if len(args) == 1:
            print(_top_level_help())
            return 0
        if args[0] == "help":  # `help audit` is `audit --help`
            args = [args[1], "--help"]
    command = "serve"
    if args and args[0] in COMMANDS:
        command = args.pop(0)
    elif args and not args[0].startswith("-"):
        # A bare word first is a mistyped command, never a serve flag: upstream's manifests
        # start with flags.
        print(f"{PROG}: error: {unknown_command_message(args[0])}", file=sys.stderr)
        return 2
    try:
        module = load(command)
    except ModuleNotFoundError as err:
        if (err.name or "webhook").split(".")[0] == "webhook":
            raise
        # The image and a plain `pip install` have what `serve` needs; the toolkit's libraries
        # are the `toolkit` extra.
        print(
            f"{PROG} {command}: error: needs {err.name}, which is not installed: the toolkit "
            f"commands need `pip install 'pod-identity-webhook[toolkit]'` (the image has only "
            "what serve needs)",
            file=sys.stderr,
        )
        return 2
    parser = build_parser(command, module)
    command_line = (PROG, command, *args)  # as typed, for reports that say how they were made
    if hasattr(module, "normalize_argv"):
        args = module.normalize_argv(args)
    namespace = parser.parse_args(args)
    namespace.command_line = command_line
    try:
        code: int = module.run(namespace)
    except UsageError as err:
        print(f"{PROG} {command}: error: {err}", file=sys.stderr)
        return 2
    return code


def _autocomplete() -> None:
    """Answer the shell's completion request (argcomplete protocol) and exit."""
    try:
        from webhook.cli.completion import autocomplete
    except ModuleNotFoundError:  # argcomplete is the toolkit extra's: no completions, no noise
        sys.exit(0)
    autocomplete()


def main(argv: Sequence[str] | None = None) -> int:
    if argv is None and "_ARGCOMPLETE" in os.environ:
        _autocomplete()
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        code = _dispatch(args)
        sys.stdout.flush()  # a closed pipe surfaces here, not in the interpreter's exit
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `... | head` closed stdout: stop quietly, as `cat` does. Point stdout at /dev/null
        # so the interpreter's final flush does not raise again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return _BROKEN_PIPE_EXIT
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
