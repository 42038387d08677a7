"""The command line behaves as kubectl and helm users expect."""

import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from webhook import __version__
from webhook.cli import main
from webhook.cli.version import UPSTREAM_COMPATIBLE_VERSION

ROOT = Path(__file__).parent.parent
CLI = [sys.executable, "-m", "webhook"]


def cli(*argv: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # type: ignore[call-overload, no-any-return]
        [*CLI, *argv], capture_output=True, text=True, timeout=60, cwd=ROOT, **kwargs
    )


# --- commands ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("typo", "meant"), [("relpay", "replay"), ("audti", "audit"), ("vesion", "version")]
)
def test_unknown_command_names_it_and_the_closest(
    capsys: pytest.CaptureFixture[str], typo: str, meant: str
) -> None:
    assert main([typo]) == 2
    err = capsys.readouterr().err
    assert f'unknown command "{typo}"; did you mean "{meant}"?' in err
    assert len(err.splitlines()) == 2  # not serve's usage


def test_unknown_command_without_a_close_one_still_names_it(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["xyzzy", "--port", "1"]) == 2
    err = capsys.readouterr().err
    assert 'unknown command "xyzzy"' in err and "did you mean" not in err


def test_help_command_shows_a_commands_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["help", "replay"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.startswith("usage: pod-identity-webhook replay")


def test_version_names_python_platform_and_upstream(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["version"]) == 0
    out = capsys.readouterr().out
    assert f"pod-identity-webhook {__version__}" in out
    assert UPSTREAM_COMPATIBLE_VERSION in out
    assert platform.python_version() in out and platform.machine() in out
    assert main(["version", "-o", "json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["version"] == __version__
    assert document["upstreamCompatibleVersion"] == UPSTREAM_COMPATIBLE_VERSION
    assert main(["version", "--output", "yaml"]) == 0
    assert yaml.safe_load(capsys.readouterr().out) == document


def test_upstream_compatible_version_is_the_one_e2e_tests_against() -> None:
    pinned = (ROOT / "e2e" / "tools" / "versions.env").read_text()
    assert f"UPSTREAM_WEBHOOK_VERSION={UPSTREAM_COMPATIBLE_VERSION}\n" in pinned


@pytest.mark.parametrize(
    "argv",
    [
        ["version", "-o", "json"],
        ["oidc", "discovery", "--issuer", "https://issuer.example", "-o", "json"],
        [
            "trust-policy",
            "generate",
            "--issuer",
            "https://i.example",
            "--account-id",
            "111122223333",
            "--namespace",
            "n",
            "--service-account",
            "s",
            "-o",
            "yaml",
        ],
    ],
)
def test_short_and_long_output_flags_are_the_same(
    capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    main(argv)
    short = capsys.readouterr().out
    index = argv.index("-o")
    main([*argv[:index], f"--output={argv[index + 1]}", *argv[index + 2 :]])
    assert capsys.readouterr().out == short


def test_yaml_output_is_the_json_document(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    generate = ["trust-policy", "generate", "--issuer", "https://i.example", "--account-id"]
    generate += ["111122223333", "--namespace", "n", "--service-account", "s"]
    assert main(generate) == 0
    policy = tmp_path / "trust.json"
    policy.write_text(capsys.readouterr().out)
    for argv in (
        generate,
        ["trust-policy", "lint", str(policy)],
        ["oidc", "discovery", "--issuer", "https://i.example"],
        ["version"],
    ):
        main([*argv, "-o", "json"])
        as_json = json.loads(capsys.readouterr().out)
        main([*argv, "-o", "yaml"])
        assert yaml.safe_load(capsys.readouterr().out) == as_json, argv


# --- pipes ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_output_into_head_ends_quietly(tmp_path: Path) -> None:
    """`... | head -1` closes the pipe early: no BrokenPipeError traceback, SIGPIPE status."""
    from .builders import admission_review, pod

    review = tmp_path / "reviews.json"
    review.write_text(json.dumps([admission_review(pod(), uid=str(i)) for i in range(3000)]))
    with subprocess.Popen(
        [*CLI, "replay", "--output", "diff", str(review)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as process:
        assert process.stdout is not None and process.stderr is not None
        process.stdout.readline()
        process.stdout.close()  # what head does after its first line
        err = process.stderr.read().decode()
        assert process.wait(timeout=60) == 141
    assert "Traceback" not in err and "BrokenPipe" not in err


# --- completion ----------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("pod-identity-webhook rep", {"replay"}),
        ("pod-identity-webhook audit --webhook-n", {"--webhook-namespace"}),
        ("pod-identity-webhook --tls-c", {"--tls-cert", "--tls-cipher-suites"}),
        ("pod-identity-webhook audit -o ", {"table", "wide", "json", "yaml", "csv"}),
        ("pod-identity-webhook completion ", {"bash", "zsh", "fish"}),
    ],
)
def test_bash_completion_asks_the_real_parsers(
    tmp_path: Path, line: str, expected: set[str]
) -> None:
    # The installed entry point, as a user's shell would find it: `python -m webhook`.
    shim = tmp_path / "pod-identity-webhook"
    shim.write_text(f'#!/bin/sh\nexec {sys.executable} -m webhook "$@"\n')
    shim.chmod(0o755)
    script = cli("completion", "bash").stdout
    words = line.split(" ")
    array = " ".join(w or '""' for w in words)
    probe = (
        f'{script}\nCOMP_LINE="{line}"; COMP_POINT=${{#COMP_LINE}}; '
        f"COMP_WORDS=({array}); COMP_CWORD={len(words) - 1}; "
        '_python_argcomplete pod-identity-webhook; printf "%s\\n" "${COMPREPLY[@]}"'
    )
    env = {**os.environ, "PATH": f"{tmp_path}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(
        ["bash", "-c", probe], capture_output=True, text=True, timeout=60, cwd=ROOT, env=env
    )
    offered = {w.strip() for w in result.stdout.split()}
    assert expected <= offered and all(o.startswith(words[-1]) for o in offered)
    assert words[-1] == "" or offered == expected


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("fish") is None, reason="needs fish")
def test_fish_completion_asks_the_real_parsers(tmp_path: Path) -> None:
    shim = tmp_path / "pod-identity-webhook"
    shim.write_text(f'#!/bin/sh\nexec {sys.executable} -m webhook "$@"\n')
    shim.chmod(0o755)
    probe = (
        "pod-identity-webhook completion fish | source; "
        'complete -C "pod-identity-webhook rep"; complete -C "pod-identity-webhook audit -o w"'
    )
    env = {**os.environ, "PATH": f"{tmp_path}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(
        ["fish", "-c", probe], capture_output=True, text=True, timeout=60, cwd=ROOT, env=env
    )
    offered = [line.split("\t")[0] for line in result.stdout.splitlines()]
    assert offered == ["replay", "wide"]


@pytest.mark.parametrize(
    ("shell", "marker"), [("zsh", "compdef"), ("fish", "complete --command pod-identity-webhook")]
)
def test_zsh_and_fish_scripts_register_the_program(shell: str, marker: str) -> None:
    result = cli("completion", shell)
    assert result.returncode == 0
    assert marker in result.stdout and "pod-identity-webhook" in result.stdout


# --- packaging -----------------------------------------------------------------------------


def test_license_is_an_spdx_expression_so_builds_print_no_deprecation() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["project"]["license"] == "Apache-2.0"
    floor = re.search(r"setuptools>=(\d+)", " ".join(project["build-system"]["requires"]))
    assert floor is not None and int(floor.group(1)) >= 77  # SPDX support starts at 77
