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
import importlib
import sys
from collections.abc import Sequence
from types import ModuleType

from webhook import __version__

# command name -> module under webhook.cli
COMMANDS: dict[str, str] = {
    "serve": "serve",
    "replay": "replay",
    "certs": "certs",
    "oidc": "oidc",
    "token": "token",
    "trust-policy": "trust_policy",
    "audit": "audit",
}


class UsageError(Exception):
    """Bad input from the user: printed as one clear line, exit code 2, never a traceback."""


def _load(command: str) -> ModuleType:
    return importlib.import_module(f"webhook.cli.{COMMANDS[command]}")


def _top_level_help() -> str:
    lines = [
        f"pod-identity-webhook {__version__}",
        "",
        "usage: pod-identity-webhook [COMMAND] [FLAGS]   (COMMAND defaults to serve)",
        "",
        "commands:",
    ]
    for name in COMMANDS:
        try:
            summary = getattr(_load(name), "HELP", "")
        except ImportError:  # a command whose optional module is not installed
            continue
        lines.append(f"  {name:<14}{summary}")
    lines.append("")
    lines.append("Run `pod-identity-webhook COMMAND --help` for a command's flags.")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in ("help", "-h", "--help") and len(args) == 1:
        print(_top_level_help())
        return 0
    command = "serve"
    if args and args[0] in COMMANDS:
        command = args.pop(0)
    module = _load(command)
    parser = argparse.ArgumentParser(
        prog=f"pod-identity-webhook {command}", description=getattr(module, "HELP", None)
    )
    module.add_arguments(parser)
    if hasattr(module, "normalize_argv"):
        args = module.normalize_argv(args)
    namespace = parser.parse_args(args)
    try:
        code: int = module.run(namespace)
    except UsageError as err:
        print(f"pod-identity-webhook {command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
