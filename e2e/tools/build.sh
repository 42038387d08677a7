#!/usr/bin/env bash
# Builds (or reuses) the pinned e2e binaries and prints, as the LAST line of stdout, the
# directory holding: kube-apiserver, kube-controller-manager, kube-scheduler, kubelet, kubectl,
# etcd, helm, amazon-eks-pod-identity-webhook, kube-proxy, and (when Go is installed) the
# single-module tools of EXTRA_TOOLS below (helm-docs, promtool, actionlint, vegeta).
#
#   e2e/tools/build.sh          build what is missing, print the directory
#   e2e/tools/build.sh --sync   regenerate the tools modules' go.mod+go.sum from versions.env
#
# Env:
#   PIW_E2E_CACHE          cache root (default ~/.cache/pod-identity-webhook/e2e-tools)
#   PIW_KUBE_APISERVER, PIW_KUBE_CONTROLLER_MANAGER, PIW_KUBE_SCHEDULER, PIW_KUBELET,
#   PIW_KUBECTL, PIW_ETCD, PIW_HELM, PIW_UPSTREAM_WEBHOOK
#                          prebuilt binaries to use instead of building; with all eight
#                          set, Go is not needed.
#   PIW_KUBE_PROXY         a prebuilt kube-proxy (built from kubeproxy/, its own module and
#                          cache key, so adding it did not change the binaries' key above)
# Exit status 3: Go is missing and not every binary was given (callers skip e2e).
set -euo pipefail

# Everything but the final directory goes to stderr so callers can take `tail -n1`.
exec 3>&1 1>&2

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
log() { printf 'e2e-tools: %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

set -a
# shellcheck source=/dev/null
source "$here/versions.env"
set +a
: "${KUBERNETES_VERSION:?}" "${ETCD_VERSION:?}" "${HELM_VERSION:?}" "${UPSTREAM_WEBHOOK_VERSION:?}"

# Bump when build flags change so stale caches are not reused.
RECIPE=1
NAMES=(kube-apiserver kube-controller-manager kube-scheduler kubelet kubectl etcd helm
    amazon-eks-pod-identity-webhook)
OVERRIDE_VARS=(PIW_KUBE_APISERVER PIW_KUBE_CONTROLLER_MANAGER PIW_KUBE_SCHEDULER PIW_KUBELET
    PIW_KUBECTL PIW_ETCD PIW_HELM PIW_UPSTREAM_WEBHOOK)
cache_root="${PIW_E2E_CACHE:-$HOME/.cache/pod-identity-webhook/e2e-tools}"

# Single-module tools: "DIR MODULE VERSION_VAR PACKAGE BINARY". Each is cached under a key of
# its own module, so adding or bumping one does not rebuild the Kubernetes binaries.
EXTRA_TOOLS=(
    "helmdocs github.com/norwoodj/helm-docs HELM_DOCS_VERSION github.com/norwoodj/helm-docs/cmd/helm-docs helm-docs"
    "promtool github.com/prometheus/prometheus PROMETHEUS_VERSION github.com/prometheus/prometheus/cmd/promtool promtool"
    "actionlint github.com/rhysd/actionlint ACTIONLINT_VERSION github.com/rhysd/actionlint/cmd/actionlint actionlint"
    "vegeta github.com/tsenart/vegeta/v12 VEGETA_VERSION github.com/tsenart/vegeta/v12 vegeta"
)
# The core modules, whose go.mod/go.sum (and versions.env above its EXTRA_TOOLS marker) key
# the cache of the binaries in NAMES.
CORE_DIRS=(etcd helm kube webhook)

# The tools modules must stand alone, whatever go.work or GOFLAGS the caller has.
export GOWORK=off GOFLAGS="${GOFLAGS:-} -mod=readonly"

# k8s.io/kubernetes v1.X.Y publishes its staging modules as v0.X.Y.
staging_version="v0.${KUBERNETES_VERSION#v1.}"

have_go() { command -v go >/dev/null 2>&1; }

sync_modules() {
    have_go || die "--sync needs Go"
    local gomod
    gomod="$(GOFLAGS='' go mod download -json "k8s.io/kubernetes@$KUBERNETES_VERSION" |
        sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",\{0,1\}$/\1/p')"
    [[ -f "$gomod" ]] || die "could not download k8s.io/kubernetes@$KUBERNETES_VERSION"
    # Replace only the staging modules kubernetes actually requires: a few (e.g.
    # sample-cli-plugin) are never published and would break resolution.
    local staging
    staging="$(awk '/=> \.\/staging\//{print $1}' "$gomod" | while read -r m; do
        grep -qE "^[[:space:]]+$m v0\.0\.0\$" "$gomod" && echo "$m"; done)"
    {
        printf 'module piw-e2e/tools/kube\n\ngo 1.26.0\n\nrequire k8s.io/kubernetes %s\n\n' \
            "$KUBERNETES_VERSION"
        printf '// k8s.io/kubernetes replaces its staging modules with local paths;\n'
        printf '// pin their published twins instead.\nreplace (\n'
        for m in $staging; do printf '\t%s => %s %s\n' "$m" "$m" "$staging_version"; done
        printf ')\n'
    } >"$here/kube/go.mod"
    rm -f "$here/kube/go.sum"
    (cd "$here/kube" && GOFLAGS='' go mod tidy)
    # kube-proxy: the same k8s.io/kubernetes and staging pins, in a module of its own.
    { printf 'module piw-e2e/tools/kubeproxy\n\ngo 1.26.0\n\nrequire k8s.io/kubernetes %s\n\n' \
        "$KUBERNETES_VERSION"
      sed -n '/^\/\/ k8s.io\/kubernetes replaces/,/^)/p' "$here/kube/go.mod"; } >"$here/kubeproxy/go.mod"
    rm -f "$here/kubeproxy/go.sum"
    (cd "$here/kubeproxy" && GOFLAGS='' go mod tidy)
    sync_simple etcd go.etcd.io/etcd/server/v3 "$ETCD_VERSION"
    sync_simple helm helm.sh/helm/v3 "$HELM_VERSION"
    sync_simple webhook github.com/aws/amazon-eks-pod-identity-webhook "$UPSTREAM_WEBHOOK_VERSION"
    local tool dir mod var
    for tool in "${EXTRA_TOOLS[@]}"; do
        read -r dir mod var _ <<<"$tool"
        sync_simple "$dir" "$mod" "${!var:?$var missing from versions.env}"
    done
    log "synced the tools modules to versions.env; commit their go.mod and go.sum"
}

sync_simple() { # sync_simple DIR MODULE VERSION: a module that only requires MODULE
    printf 'module piw-e2e/tools/%s\n\ngo 1.26.0\n\nrequire %s %s\n' "$1" "$2" "$3" \
        >"$here/$1/go.mod"
    rm -f "$here/$1/go.sum"
    (cd "$here/$1" && GOFLAGS='' go mod tidy)
}

check_modules() {
    local hint="versions.env and the tools modules disagree; run: e2e/tools/build.sh --sync"
    grep -qE "^[[:space:]]*(require[[:space:]]+)?k8s.io/kubernetes $KUBERNETES_VERSION\$" \
        "$here/kube/go.mod" || die "kube/go.mod does not require k8s.io/kubernetes $KUBERNETES_VERSION; $hint"
    if grep -E '=> k8s\.io/' "$here/kube/go.mod" | grep -vq " $staging_version\$"; then
        die "kube/go.mod has staging replaces other than $staging_version; $hint"
    fi
    grep -qE "^[[:space:]]*(require[[:space:]]+)?k8s.io/kubernetes $KUBERNETES_VERSION\$" \
        "$here/kubeproxy/go.mod" || die "kubeproxy/go.mod does not require k8s.io/kubernetes $KUBERNETES_VERSION; $hint"
    diff -q <(grep '=> k8s\.io/' "$here/kube/go.mod") <(grep '=> k8s\.io/' "$here/kubeproxy/go.mod") \
        >/dev/null || die "kubeproxy/go.mod and kube/go.mod pin different staging modules; $hint"
    local dir mod ver
    while read -r dir mod ver; do
        grep -qE "^[[:space:]]*(require[[:space:]]+)?$mod $ver\$" "$here/$dir/go.mod" ||
            die "$dir/go.mod does not require $mod $ver; $hint"
    done <<MODULES
etcd go.etcd.io/etcd/server/v3 $ETCD_VERSION
helm helm.sh/helm/v3 $HELM_VERSION
webhook github.com/aws/amazon-eks-pod-identity-webhook $UPSTREAM_WEBHOOK_VERSION
$(for tool in "${EXTRA_TOOLS[@]}"; do read -r dir mod var _ <<<"$tool"; echo "$dir $mod ${!var:?}"; done)
MODULES
}

# verify NAME PATH: the binary runs and reports the pinned version.
verify() {
    local name="$1" bin="$2" out want
    case "$name" in
        kube-apiserver | kube-controller-manager | kube-scheduler | kubelet | kube-proxy)
            out="$("$bin" --version 2>&1)"; want="$KUBERNETES_VERSION" ;;
        kubectl) out="$("$bin" version --client 2>&1)"; want="$KUBERNETES_VERSION" ;;
        etcd) out="$("$bin" --version 2>&1)"; want="${ETCD_VERSION#v}" ;;
        helm) out="$("$bin" version --short 2>&1)"; want="$HELM_VERSION" ;;
        amazon-eks-pod-identity-webhook) out="$("$bin" --version 2>&1)"; want="$UPSTREAM_WEBHOOK_VERSION" ;;
    esac || { log "$name ($bin) failed to run: $out"; return 1; }
    if [[ "$out" != *"$want"* ]]; then
        # Overrides may legitimately be other versions: warn, do not fail.
        log "WARNING: $name reports '${out%%$'\n'*}', pinned is $want"
    else
        log "ok: $name ${out%%$'\n'*}"
    fi
}

ldflags_kube() {
    local major="${KUBERNETES_VERSION#v}" minor
    minor="${major#*.}"; minor="${minor%%.*}"; major="${major%%.*}"
    local f="-s -w" pkg
    # What kubernetes' hack/lib/version.sh stamps; without it the apiserver reports
    # v0.0.0-master, which breaks helm's and clients' version checks.
    for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
        f+=" -X $pkg.gitVersion=$KUBERNETES_VERSION -X $pkg.gitMajor=$major"
        f+=" -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean"
    done
    printf '%s' "$f"
}

ldflags_helm() {
    # Helm derives its default Capabilities.KubeVersion from the client-go it links.
    local cg major minor
    cg="$(go -C "$here/helm" list -m -f '{{.Version}}' k8s.io/client-go)"
    cg="${cg#v}"; major=$(( ${cg%%.*} + 1 )); minor="${cg#*.}"; minor="${minor%%.*}"
    local f="-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
    f+=" -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=$major"
    f+=" -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=$minor"
    f+=" -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=$major"
    f+=" -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=$minor"
    printf '%s' "$f"
}

# build NAME DIR: builds one binary into DIR atomically (temp name, then rename).
build() {
    local name="$1" dir="$2" tmp start
    tmp="$(mktemp -d "$dir/.build-$name.XXXXXX")"
    start=$SECONDS
    log "building $name (this can take a while: kube-apiserver ~6 min on 2 cores, then kube-controller-manager ~4)"
    case "$name" in
        kube-apiserver | kube-controller-manager | kube-scheduler | kubelet | kubectl)
            go -C "$here/kube" build -p 2 -trimpath -ldflags="$(ldflags_kube)" \
                -o "$tmp/$name" "k8s.io/kubernetes/cmd/$name" ;;
        etcd)
            go -C "$here/etcd" build -p 2 -trimpath -ldflags="-s -w" \
                -o "$tmp/$name" go.etcd.io/etcd/server/v3 ;;
        helm)
            go -C "$here/helm" build -p 2 -trimpath -ldflags="$(ldflags_helm)" \
                -o "$tmp/$name" helm.sh/helm/v3/cmd/helm ;;
        amazon-eks-pod-identity-webhook)
            go -C "$here/webhook" build -p 2 -trimpath \
                -ldflags="-s -w -X main.webhookVersion=$UPSTREAM_WEBHOOK_VERSION" \
                -o "$tmp/$name" github.com/aws/amazon-eks-pod-identity-webhook ;;
    esac || { rm -rf "$tmp"; die "building $name failed"; }
    verify "$name" "$tmp/$name" || { rm -rf "$tmp"; die "$name does not run"; }
    mv -f "$tmp/$name" "$dir/$name"
    rm -rf "$tmp"
    log "built $name in $((SECONDS - start))s"
}

# build_extra TOOL OUT: builds one EXTRA_TOOLS entry under its own key (unless cached) and
# links it into OUT.
build_extra() {
    local dir mod var pkg bin key tdir tmp start
    read -r dir mod var pkg bin <<<"$1"
    key="$(cd "$here" && { echo "recipe=$RECIPE"; go version; echo "$mod ${!var}"; cat "$dir/go.mod" "$dir/go.sum"; } |
        sha256sum | cut -c1-16)"
    tdir="$cache_root/tools/$bin-$key"
    if [[ ! -x "$tdir/$bin" ]]; then
        mkdir -p "$tdir"
        tmp="$(mktemp -d "$tdir/.build.XXXXXX")"
        start=$SECONDS
        log "building $bin ($mod ${!var})"
        go -C "$here/$dir" build -p 2 -trimpath -ldflags="-s -w" -o "$tmp/$bin" "$pkg" ||
            { rm -rf "$tmp"; die "building $bin failed"; }
        "$tmp/$bin" --help >/dev/null 2>&1 || { rm -rf "$tmp"; die "$bin does not run"; }
        mv -f "$tmp/$bin" "$tdir/$bin"
        rm -rf "$tmp"
        log "built $bin in $((SECONDS - start))s"
    fi
    touch "$tdir"
    link_into "$2" "$bin" "$tdir/$bin"
}

# build_kube_proxy OUT: kube-proxy from kubeproxy/ (the k8s.io/kubernetes version kube/ pins),
# cached under a key of that module alone, linked into OUT; PIW_KUBE_PROXY instead if set.
build_kube_proxy() {
    local out="$1" key tdir tmp start
    if [[ -n "${PIW_KUBE_PROXY:-}" ]]; then
        [[ -x "$PIW_KUBE_PROXY" ]] || die "PIW_KUBE_PROXY=$PIW_KUBE_PROXY is not an executable file"
        link_into "$out" kube-proxy "$PIW_KUBE_PROXY"
        verify kube-proxy "$out/kube-proxy" || die "PIW_KUBE_PROXY=$PIW_KUBE_PROXY does not run"
        return
    fi
    have_go || { log "no Go and no PIW_KUBE_PROXY: kube-proxy not provided (pod-network tests fail)"; return; }
    key="$(cd "$here" && { echo "recipe=$RECIPE"; go version; echo "kube-proxy $KUBERNETES_VERSION"
        cat kubeproxy/go.mod kubeproxy/go.sum; } | sha256sum | cut -c1-16)"
    tdir="$cache_root/tools/kube-proxy-$key"
    if [[ ! -x "$tdir/kube-proxy" ]]; then
        mkdir -p "$tdir"
        tmp="$(mktemp -d "$tdir/.build.XXXXXX")"
        start=$SECONDS
        log "building kube-proxy (k8s.io/kubernetes $KUBERNETES_VERSION, ~2-3 min on 2 cores)"
        go -C "$here/kubeproxy" build -p 2 -trimpath -ldflags="$(ldflags_kube)" \
            -o "$tmp/kube-proxy" k8s.io/kubernetes/cmd/kube-proxy ||
            { rm -rf "$tmp"; die "building kube-proxy failed"; }
        verify kube-proxy "$tmp/kube-proxy" || { rm -rf "$tmp"; die "kube-proxy does not run"; }
        mv -f "$tmp/kube-proxy" "$tdir/kube-proxy"
        rm -rf "$tmp"
        log "built kube-proxy in $((SECONDS - start))s"
    fi
    touch "$tdir"
    link_into "$out" kube-proxy "$tdir/kube-proxy"
}

link_into() { # link_into DIR NAME TARGET
    ln -sfn "$(readlink -f "$3")" "$1/$2"
}

main() {
    if [[ "${1:-}" == "--sync" ]]; then sync_modules; return; fi
    [[ $# -eq 0 ]] || die "usage: $0 [--sync]"

    local i name var all_overridden=1 any_overridden=0
    for i in "${!NAMES[@]}"; do
        var="${OVERRIDE_VARS[$i]}"
        if [[ -n "${!var:-}" ]]; then
            [[ -x "${!var}" ]] || die "$var=${!var} is not an executable file"
            any_overridden=1
        else
            all_overridden=0
        fi
    done

    mkdir -p "$cache_root"
    local gobuilt=""
    if [[ $all_overridden -eq 0 ]]; then
        if ! have_go; then
            log "Go is not installed and not all of ${OVERRIDE_VARS[*]} are set:"
            log "cannot provide the Kubernetes binaries/etcd/helm/upstream webhook; e2e must be skipped."
            exit 3
        fi
        check_modules
        local key
        key="$(
            cd "$here"
            # versions.env only above the EXTRA_TOOLS marker: extra tools have keys of their own.
            { echo "recipe=$RECIPE"; go version; sed '/^# --- EXTRA_TOOLS/,$d' versions.env
              for d in "${CORE_DIRS[@]}"; do cat "$d/go.mod"; done
              for d in "${CORE_DIRS[@]}"; do cat "$d/go.sum"; done; } |
                sha256sum | cut -c1-16
        )"
        gobuilt="$cache_root/$key"
        mkdir -p "$gobuilt"
        # One builder at a time per cache (parallel pytest sessions, two checkouts).
        exec 9>"$cache_root/.lock"
        flock -n 9 || { log "waiting for another build.sh holding $cache_root/.lock"; flock 9; }
        for i in "${!NAMES[@]}"; do
            name="${NAMES[$i]}"; var="${OVERRIDE_VARS[$i]}"
            [[ -n "${!var:-}" || -x "$gobuilt/$name" ]] || build "$name" "$gobuilt"
        done
        local tool
        for tool in "${EXTRA_TOOLS[@]}"; do build_extra "$tool" "$gobuilt"; done
        build_kube_proxy "$gobuilt"
        flock -u 9
        # Keys of other checkouts/branches stay usable; drop only long-unused ones.
        touch "$gobuilt"
        find "$cache_root" -mindepth 1 -maxdepth 1 -type d -regex '.*/[0-9a-f]\{16\}' \
            ! -name "$key" -mtime +14 -exec rm -rf {} + 2>/dev/null || true
    fi

    local out="$gobuilt"
    if [[ $any_overridden -eq 1 ]]; then
        local hash
        hash="$(for i in "${!NAMES[@]}"; do var="${OVERRIDE_VARS[$i]}"
            printf '%s=%s\n' "${NAMES[$i]}" "${!var:-$gobuilt/${NAMES[$i]}}"; done |
            sha256sum | cut -c1-16)"
        out="$cache_root/custom-$hash"
        mkdir -p "$out"
        for i in "${!NAMES[@]}"; do
            name="${NAMES[$i]}"; var="${OVERRIDE_VARS[$i]}"
            if [[ -n "${!var:-}" ]]; then
                link_into "$out" "$name" "${!var}"
                verify "$name" "$out/$name" || die "$var=${!var} does not run"
            else
                link_into "$out" "$name" "$gobuilt/$name"
            fi
        done
        if have_go; then
            local tool
            for tool in "${EXTRA_TOOLS[@]}"; do build_extra "$tool" "$out"; done
        fi
        build_kube_proxy "$out"
    fi
    echo "$out" >&3
}

main "$@"
