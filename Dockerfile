# syntax=docker/dockerfile:1
#
# pod-identity-webhook image.
#   docker build --build-arg VERSION=$(python -c 'import webhook; print(webhook.__version__)') -t pod-identity-webhook .
#
# Stage 1 builds the project's wheel and installs it, with its dependencies, into a
# virtualenv at /opt/venv. Stage 2 is a clean python:3.12-slim with only that venv: no
# compiler, no pip (neither the venv's nor the base image's), a numeric non-root user, and
# nothing written at run time, so it runs with readOnlyRootFilesystem.

FROM python:3.12-slim AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /src
# .dockerignore keeps the context to the package sources and project metadata.
COPY . .

RUN python -m pip wheel --no-deps --wheel-dir /wheels . \
 && python -m venv /opt/venv \
 && /opt/venv/bin/python -m pip install /wheels/*.whl \
 && /opt/venv/bin/python -m pip uninstall -y pip setuptools wheel \
 && /opt/venv/bin/python -m compileall -q /opt/venv/lib \
 && /opt/venv/bin/pod-identity-webhook --version


FROM python:3.12-slim

ARG VERSION=0.1.0
ARG SOURCE=https://github.com/pod-identity-webhook/pod-identity-webhook

LABEL org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.title="pod-identity-webhook" \
      org.opencontainers.image.description="Mutating admission webhook injecting AWS IAM credentials (IRSA) into pods" \
      org.opencontainers.image.licenses="Apache-2.0"

# The base image's pip is not needed at run time: remove it, its console scripts, and the
# wheels ensurepip could reinstall it from.
RUN python -m pip uninstall -y pip setuptools wheel \
 && rm -rf /usr/local/lib/python3*/ensurepip/_bundled /root/.cache

COPY --from=builder /opt/venv /opt/venv

ENV PATH="/opt/venv/bin:${PATH}" \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

# Numeric so that runAsNonRoot can verify it; OpenShift replaces it with its own UID.
USER 65532:65532

# 8443: HTTPS /mutate, /healthz, /readyz (--port). 9999: HTTP /metrics (--metrics-port).
EXPOSE 8443 9999

ENTRYPOINT ["pod-identity-webhook"]
