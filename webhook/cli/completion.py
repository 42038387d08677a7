"""`pod-identity-webhook completion bash|zsh|fish`: shell completion scripts.

argcomplete rather than shtab: shtab writes static scripts for bash, zsh and tcsh but not fish,
and it would have to describe our default command (serve flags without a command word) by
hand. argcomplete's scripts call back into this program, so completion always matches the
installed version's real parsers, for all three shells.
"""

from __future__ import annotations

import argparse

from webhook.cli import COMMANDS, PROG, build_parser, load

HELP = "print a shell completion script: source <(pod-identity-webhook completion bash)"
SHELLS = ("bash", "zsh", "fish")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("shell", choices=SHELLS, help="the shell to complete in")


def full_parser() -> argparse.ArgumentParser:
    """The whole command line as one parser: serve's flags at the top (it is the default
    command) and every command as a subcommand."""
    root = build_parser("", load("serve"))
    root.prog = PROG
    commands = root.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        module = load(name)
        sub = commands.add_parser(name, help=getattr(module, "HELP", None))
        module.add_arguments(sub)
    return root


def autocomplete() -> None:
    """Answer a completion request from one of the scripts below; exits the process."""
    import argcomplete

    argcomplete.autocomplete(full_parser(), always_complete_options="long")


def run(args: argparse.Namespace) -> int:
    from argcomplete.shell_integration import shellcode

    print(shellcode([PROG], shell=args.shell), end="")
    return 0
