"""`pod-identity-webhook version`: what is running, for bug reports and upgrade checks."""

from __future__ import annotations

import argparse
import platform
import sys

from webhook import __version__
from webhook.cli.common import add_output_flag, print_document

HELP = "print the version, the Python and platform, and the upstream release it matches"

# The upstream webhook release whose flags, annotations and patches this one reproduces; the
# e2e differential suite runs against exactly this release (e2e/tools/versions.env).
UPSTREAM_COMPATIBLE_VERSION = "v0.6.17"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_output_flag(parser, ("text", "json", "yaml"))


def version_info() -> dict[str, str]:
    return {
        "version": __version__,
        "upstreamCompatibleVersion": UPSTREAM_COMPATIBLE_VERSION,
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "platform": f"{sys.platform}/{platform.machine()}",
    }


def run(args: argparse.Namespace) -> int:
    info = version_info()
    if args.output == "text":
        print(f"pod-identity-webhook {info['version']}")
        upstream = info["upstreamCompatibleVersion"]
        print(f"compatible with upstream amazon-eks-pod-identity-webhook {upstream}")
        print(f"python {info['python']}, platform {info['platform']}")
        return 0
    print_document(info, args.output)
    return 0
