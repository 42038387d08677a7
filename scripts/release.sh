#!/usr/bin/env bash
# make release: writes dist/ with everything a release publishes, then SHA256SUMS over it:
#
#   pod_identity_webhook-V-py3-none-any.whl, pod_identity_webhook-V.tar.gz   (python -m build)
#   pod-identity-webhook-V.oci.tar        the image as an OCI archive (podman, this machine's
#                                         arch), named localhost/pod-identity-webhook:V-<commit>
#   pod-identity-webhook-CHART.tgz        the Helm chart (helm package)
#   pod-identity-webhook-V.cdx.json       CycloneDX SBOM of what the image ships: requirements/
#                                         runtime.txt less requirements/not-shipped.txt
#   SHA256SUMS                            `sha256sum -c SHA256SUMS` in dist/ verifies them all
#
#   scripts/release.sh              everything
#   scripts/release.sh --no-image   all but the image (CI builds it multi-arch with buildx)
#
# Releases HEAD: uncommitted changes are left out (the script itself runs from the work tree).
# Env: BASE_IMAGE (the Dockerfile's default otherwise; must be local or pullable), HELM (else
# built by e2e/tools/build.sh), DIST (default dist), IMAGE (default localhost/pod-identity-webhook).
# Timestamps come from the last commit (SOURCE_DATE_EPOCH), not the clock: the image's
# `created` label and layer times, the SBOM's timestamp, the sdist's and wheel's file times.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
log() { printf 'release: %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

with_image=1
case "${1:-}" in
    --no-image) with_image=0 ;;
    "") ;;
    *) die "usage: $0 [--no-image]" ;;
esac

bin="$repo/.venv/bin"
dist="$(mkdir -p "${DIST:-dist}" && cd "${DIST:-dist}" && pwd)"
version="$(git show HEAD:webhook/__init__.py | sed -n 's/^__version__ = "\(.*\)"$/\1/p')"
[[ -n "$version" ]] || die "no __version__ in webhook/__init__.py"
revision="$(git rev-parse HEAD)"
if [[ -n "$(git status --porcelain --untracked-files=no)" ]]; then
    log "NOTE: uncommitted changes are not released; building commit $revision"
fi
export SOURCE_DATE_EPOCH="${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct)}"
created="$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y-%m-%dT%H:%M:%SZ)"

rm -rf "${dist:?}"/*
log "version $version, revision $revision, created $created -> $dist"

# Everything is built from the commit itself (git archive), not the work tree: the artifacts
# are what the revision label names, whatever else is lying around or being edited.
src="$(mktemp -d)"
trap 'rm -rf "$src"' EXIT
git archive --format=tar HEAD | tar -x -C "$src"
cd "$src"

# Wheel and sdist, built by the venv's locked setuptools (requirements/build.txt).
"$bin/python" -m build --quiet --no-isolation --outdir "$dist" . >&2

# The SBOM of what the image ships: the runtime lock less the distributions the Dockerfile
# removes (requirements/not-shipped.txt). cyclonedx-py reads the root component from
# pyproject.toml, whose version is dynamic: it is filled in here.
sbom="$dist/pod-identity-webhook-$version.cdx.json"
PYTHONWARNINGS=ignore::UserWarning "$bin/cyclonedx-py" requirements requirements/runtime.txt \
    --pyproject pyproject.toml --mc-type application --output-reproducible --of JSON -o "$sbom"
"$bin/python" - "$sbom" "$version" requirements/not-shipped.txt <<'PY'
import json, re, sys
path, version, not_shipped = sys.argv[1], sys.argv[2], sys.argv[3]
canonical = lambda name: re.sub(r"[-_.]+", "-", name).lower()
lines = (line.split("#", 1)[0].strip() for line in open(not_shipped))
dropped = {canonical(line) for line in lines if line}
bom = json.load(open(path))
root = bom["metadata"]["component"]
root["version"] = version
root["purl"] = f"pkg:pypi/{root['name']}@{version}"
gone = {c["bom-ref"] for c in bom["components"] if canonical(c["name"]) in dropped}
bom["components"] = [c for c in bom["components"] if c["bom-ref"] not in gone]
if "dependencies" in bom:
    bom["dependencies"] = [
        {**d, "dependsOn": [r for r in d.get("dependsOn", []) if r not in gone]}
        for d in bom["dependencies"]
        if d["ref"] not in gone
    ]
json.dump(bom, open(path, "w"), indent=2, sort_keys=True)
open(path, "a").write("\n")
PY

# The chart.
helm="${HELM:-}"
if [[ -z "$helm" ]]; then
    tools="$(bash "$repo/e2e/tools/build.sh" | tail -n1)" || die "e2e/tools/build.sh failed; set HELM=/path/to/helm"
    helm="$tools/helm"
fi
"$helm" package charts/pod-identity-webhook --destination "$dist" >&2

if [[ $with_image -eq 1 ]]; then
    command -v podman >/dev/null || die "podman is needed for the image (apt-get install podman), or pass --no-image"
    # Named after the commit too: never the plain :VERSION tag that `make image` and the e2e
    # image cache own (a concurrent e2e build would take one for the other).
    ref="${IMAGE:-localhost/pod-identity-webhook}:$version-${revision:0:12}"
    args=(--build-arg "VERSION=$version" --build-arg "REVISION=$revision" --build-arg "CREATED=$created"
        --timestamp "$SOURCE_DATE_EPOCH")
    [[ -n "${BASE_IMAGE:-}" ]] && args+=(--build-arg "BASE_IMAGE=$BASE_IMAGE")
    # As e2e/images builds: its containers.conf without systemd, the host's CA bundle for pip.
    [[ -d /run/systemd/system ]] || export CONTAINERS_CONF="${CONTAINERS_CONF:-$repo/e2e/images/containers.conf}"
    ca=/etc/ssl/certs/ca-certificates.crt
    [[ -f "$ca" ]] && args+=(-v "$ca:/run/piw-build-ca.crt:ro" --build-arg PIP_CERT=/run/piw-build-ca.crt)
    podman build --network=host "${args[@]}" -t "$ref" . >&2
    podman save --format oci-archive -o "$dist/pod-identity-webhook-$version.oci.tar" "$ref"
    log "image $ref ($(podman image inspect --format '{{.Size}}' "$ref") bytes), saved as an OCI archive"
fi

(cd "$dist" && find . -maxdepth 1 -type f ! -name SHA256SUMS -printf '%f\n' | LC_ALL=C sort |
    xargs sha256sum >SHA256SUMS)
log "wrote:"
(cd "$dist" && ls -l --time-style=+ | tail -n +2 | awk '{printf "  %12s  %s\n", $5, $NF}') >&2
