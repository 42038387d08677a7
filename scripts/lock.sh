#!/usr/bin/env bash
# Writes the hashed dependency locks from pyproject.toml, with uv (pinned in the dev lock):
#
#   requirements/dev.txt      runtime + the toolkit and dev extras: what `make test`'s venv installs
#   requirements/runtime.txt  runtime only (what `serve` needs), each pin taken from dev.txt:
#                             what the image installs (less kubernetes' asyncio half: Dockerfile)
#   requirements/build.txt    [build-system] requires: what builds the wheel (image, make release)
#
#   scripts/lock.sh [ARGS]    rewrite the locks (make lock); ARGS go to uv pip compile,
#                             e.g. --upgrade-package kubernetes, or --upgrade for everything
#   scripts/lock.sh --check   exit 1, with a diff, when pyproject.toml and the locks disagree
#                             (make lock-check, part of make test)
#
# uv resolves "universally" (every platform and Python >= 3.11 at once, with markers) and
# keeps the versions an existing lock already pins, so --check only fails when pyproject.toml
# changed (a new, dropped or re-bounded dependency), not when PyPI has a newer release.
# Needs PyPI (or the index in UV_INDEX_URL / PIP_INDEX_URL) and nothing else.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
uv="${UV:-$repo/.venv/bin/uv}"
python="${PYTHON:-$repo/.venv/bin/python}"
[[ -x "$uv" ]] || { echo "lock.sh: $uv not found; run make (it installs the dev lock)" >&2; exit 1; }
# The host's CA bundle (a TLS-intercepting proxy) instead of uv's built-in roots.
export UV_NATIVE_TLS="${UV_NATIVE_TLS:-1}"

check=0
if [[ "${1:-}" == "--check" ]]; then
    [[ $# -eq 1 ]] || { echo "usage: $0 --check | [uv pip compile options...]" >&2; exit 2; }
    check=1
    shift
fi

compile() { # compile OUT ARGS...: one lock, kept versions from OUT's current content
    local out="$1"; shift
    (cd "$repo" && "$uv" pip compile --quiet --universal --python-version 3.11 \
        --generate-hashes --custom-compile-command "make lock" -o "$out" "$@")
}

locks=(dev runtime build)
work="$repo/requirements"
if [[ $check -eq 1 ]]; then
    work="$(mktemp -d)"
    trap 'rm -rf "$work"' EXIT
    for name in "${locks[@]}"; do
        [[ -f "$repo/requirements/$name.txt" ]] && cp "$repo/requirements/$name.txt" "$work/"
    done
fi
mkdir -p "$work"

compile "$work/dev.txt" pyproject.toml --extra toolkit --extra dev "$@"
# The runtime pins are the dev pins, so the tests run exactly what ships. (Resolved alone,
# runtime could take a kubernetes needing python-dateutil>=3, which botocore in dev forbids.)
compile "$work/runtime.txt" pyproject.toml -c "$work/dev.txt"
# Its "via -c" annotations name the constraint file as given: the same text in --check's copy.
sed -i "s|-c $work/dev.txt\$|-c requirements/dev.txt|" "$work/runtime.txt"
# uv reads the build requirements from stdin ("-"), so no input file path enters the lock.
"$python" -c 'import sys, tomllib; print(*tomllib.load(open(sys.argv[1], "rb"))["build-system"]["requires"], sep="\n")' \
    "$repo/pyproject.toml" | compile "$work/build.txt" - -c "$work/dev.txt"
sed -i "s|-c $work/dev.txt\$|-c requirements/dev.txt|" "$work/build.txt"

if [[ $check -eq 1 ]]; then
    status=0
    for name in "${locks[@]}"; do
        diff -u "$repo/requirements/$name.txt" "$work/$name.txt" || status=1
    done
    if [[ $status -ne 0 ]]; then
        echo "lock-check: pyproject.toml and requirements/*.txt disagree; run: make lock" >&2
    fi
    exit $status
fi
