# pod-identity-webhook image.
#
#   podman build -t pod-identity-webhook:$(python3 -c 'import webhook; print(webhook.__version__)') .
#   (or docker build; `make image` does this and prints how to load or push the result)
#
# Stage 1 installs the locked dependencies of `serve` into a virtualenv at /opt/venv (pip
# --require-hashes --no-deps from requirements/runtime.txt: nothing resolved at build time),
# then builds the project's wheel with the locked setuptools (requirements/build.txt, in a
# throwaway venv) and adds it with --no-deps, runs `pip check`, and removes what `serve` never
# loads: kubernetes' asyncio client and the distributions only it needs
# (requirements/not-shipped.txt; requirements/prune.py fails the build if `pip check` then
# reports anything else), the native extensions' debug symbols (strip --strip-debug) and the
# Cython sources and type stubs next to them. The kubernetes package, which `serve` imports
# whole for its configuration loaders and ApiClient, ships as a zip of bytecode
# (requirements/zip_package.py: 6 MB instead of 58 MB of sources and bytecode). The toolkit's
# libraries (the `toolkit` extra: replay, certs, oidc, token, trust-policy, audit, completion)
# are not in the image; `pip install 'pod-identity-webhook[toolkit]'` has them. The dependency layer comes before the source
# COPY, so a source change reuses it.
#
# Stage 2 has no RUN: it adds that venv to BASE_IMAGE and sets the user and entrypoint, so
# BASE_IMAGE can be a distroless Python (no shell, no pip) with python3 at the same path as in
# the builder: no compiler, no pip in the venv, a numeric non-root user, and nothing written at
# run time, so it runs with readOnlyRootFilesystem. Whatever else BASE_IMAGE holds stays (the
# official python image's own pip, for one): a distroless base holds least.
#
# BASE_IMAGE is the official python:3.12-slim multi-arch index, pinned by digest (3.12.13 on
# Debian trixie, as published in August 2026; re-resolve with
# `podman pull python:3.12-slim && podman image inspect --format '{{.Digest}}' python:3.12-slim`).
# Any image with `python3 -m venv` works for the builder, and BUILDER_IMAGE may differ from
# BASE_IMAGE when that has none (a distroless base: build on the Debian image it is made from,
# whose python3 is at the same path). The e2e suite builds on a debootstrapped Debian (python3 at
# /usr/bin, no pip) because no registry is reachable there.
ARG BASE_IMAGE=docker.io/library/python:3.12-slim@sha256:229a2c5bfa27522db7815ea81f9bed70af17ccb9de9fc7ad142b1877b5830d36

ARG BUILDER_IMAGE=${BASE_IMAGE}

FROM ${BUILDER_IMAGE} AS builder

# Behind a TLS-intercepting proxy, pip needs the host's CA bundle: mount it into the build
# and name it here (podman build -v /etc/ssl/certs/ca-certificates.crt:/run/ca.crt:ro
# --build-arg PIP_CERT=/run/ca.crt). Unset by default; a builder-stage ARG never reaches
# the final image.
ARG PIP_CERT

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /src

# binutils' strip, for the native extensions' debug symbols below (uvloop's are 12 of its 14 MB),
# installed from the builder image's own apt sources when it has none. The builder only.
RUN command -v strip >/dev/null || { apt-get update -qq \
      && apt-get install -y -qq --no-install-recommends binutils >/dev/null \
      && rm -rf /var/lib/apt/lists/*; }

# The venvs' own pip (from ensurepip) installs, so the base needs no pip. Bytecode is
# compiled here, since nothing can be written at run time, but not by pip: after pruning.
# unchecked-hash .pyc files do not record source mtimes, so they stay valid whatever
# timestamps the layers get (podman build --timestamp in make release).
COPY requirements/runtime.txt requirements/build.txt requirements/
RUN python3 -m venv /opt/venv \
 && /opt/venv/bin/python3 -m pip install --no-compile --require-hashes --no-deps \
        -r requirements/runtime.txt \
 && python3 -m venv /opt/build \
 && /opt/build/bin/python3 -m pip install --require-hashes --no-deps -r requirements/build.txt

# .dockerignore keeps the context to the package sources and project metadata.
COPY . .

# pip check: the lock holds everything the project's metadata asks for; then prune.py removes
# what serve never loads and checks again (only the removed distributions may be missing).
RUN /opt/build/bin/python3 -m pip wheel --no-build-isolation --no-deps --wheel-dir /wheels . \
 && /opt/venv/bin/python3 -m pip install --no-compile --no-deps /wheels/*.whl \
 && /opt/venv/bin/python3 -m pip check \
 && /opt/venv/bin/python3 requirements/prune.py requirements/not-shipped.txt \
 && /opt/venv/bin/python3 -m pip uninstall -y pip setuptools wheel \
 && find /opt/venv \( -name '*.so' -o -name '*.so.*' \) -type f -exec strip --strip-debug {} + \
 && find /opt/venv \( -name '*.pyx' -o -name '*.pxd' -o -name '*.pyi' \) -type f -delete \
 && /opt/venv/bin/python3 requirements/zip_package.py kubernetes client/api client/models \
 && /opt/venv/bin/python3 -m compileall -q --invalidation-mode unchecked-hash /opt/venv/lib \
 && /opt/venv/bin/pod-identity-webhook --version


FROM ${BASE_IMAGE}

ARG VERSION=0.1.0
ARG SOURCE=https://github.com/pod-identity-webhook/pod-identity-webhook
LABEL org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.title="pod-identity-webhook" \
      org.opencontainers.image.description="Mutating admission webhook injecting AWS IAM credentials (IRSA) into pods" \
      org.opencontainers.image.licenses="Apache-2.0"

COPY --from=builder /opt/venv /opt/venv

ENV PATH="/opt/venv/bin:${PATH}" \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

# Numeric so that runAsNonRoot can verify it; OpenShift replaces it with its own UID.
USER 65532:65532

# 8443: HTTPS /mutate, /healthz, /readyz (--port). 9999: HTTP /metrics (--metrics-port).
EXPOSE 8443 9999

# The commit built and its time (RFC 3339): make release passes `git rev-parse HEAD` and the
# commit's date, so rebuilding one commit labels it the same. Last, so that a new commit
# reuses every layer above.
ARG REVISION=unknown
ARG CREATED=unknown
LABEL org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}"

ENTRYPOINT ["pod-identity-webhook"]
